"""Compose a config from command-line overrides as Hydra does, refusing bad input as a :class:`ConfigError`.

Hydra words a bad override in several lines of its own and exits with status 1, and it appends a
``+key`` that the schema does not know without a word (the run then ignores it). :func:`compose_checked`
refuses, before composing, keys that :class:`~experiments.config.Config` does not have (with or without
``+``, suggesting close matches) and config group options that do not exist (listing them); what Hydra
or OmegaConf still raise while composing (a value of the wrong type, bad override syntax, ``+`` on a key
that is set) becomes a ``ConfigError`` too, as do several values outside a multirun
(:func:`refuse_sweeps`). Like ``validate``'s, each names one key, its value and a reason.

Two rules need the composition itself: the schedule group's ``workers_N`` options (:func:`workers_option`: the
config that sets ``algo.num_workers=N``, which a study's sweep adds to the schedules that take workers, as in
``+schedule=[a2c_workers,workers_4]``), and :func:`check_env_settings`, which finds an env given by ``env.id`` that
keeps another env's name, budget or threshold.
"""

from __future__ import annotations

import difflib
import re
import sys
import types
from collections.abc import Iterator, Sequence
from dataclasses import is_dataclass
from functools import cache
from typing import Any, Union, get_args, get_origin, get_type_hints

from hydra.core.config_loader import ConfigLoader
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, Override, ValueType
from hydra.errors import HydraException, OverrideParseException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from experiments.config import Config, ConfigError, validate

TYPE_NAMES = {int: ("an integer", "integers"), float: ("a float", "floats"), str: ("a string", "strings"),
              bool: ("a boolean (true or false)", "booleans")}
LEXER_ERROR = "LexerNoViableAltException: "
# Hydra's words for mistakes that no exception field names, as (pattern naming the key, our reason).
HYDRA_MESSAGES = (
    (r"An item is already at '(?P<key>[^']+)'", "is set already; drop the + to override it"),
    (r"Could not override '(?P<key>[^']+)'\. No match in the defaults list",
     "no {key} config is in the defaults list; add one with +{key}={text}"),
    (r"Multiple values for (?P<key>\S+)\.", "is chosen already; drop the + to change it"),
    (r"force-add of config groups is not supported: '\+\+(?P<key>[^=@]+)", "is a config group; drop the ++"),
    (r"Sweeping over Hydra's configuration is not supported : '(?P<key>[^=]+)", "Hydra's own settings cannot be swept"),
)
SCHEDULE_GROUP = "schedule"
WORKERS_OPTION = re.compile(r"workers_(?P<count>[1-9][0-9]*)")  # the schedule group's option setting num_workers
# The settings an env config makes for its own env: an env given by env.id must not keep another env's.
ENV_SETTINGS = ("env.name", "total_env_steps", "env.solved_return")
_warned: set[str] = set()  # warnings this process printed already: one line each, however often a config is checked


class UnknownKey(LookupError):
    """A dotted key that the schema does not have: where it stops matching, and the keys known there."""

    def __init__(self, parent: str, name: str, known: Sequence[str]):
        self.parent, self.name, self.known = parent, name, list(known)
        super().__init__(f"{parent or 'the config'} has no key {name}")

    def reason(self, also_known: Sequence[str] = ()) -> str:
        candidates = list(dict.fromkeys([*self.known, *also_known]))  # a group is often a key too: algo, env
        close = difflib.get_close_matches(self.name, candidates, n=3, cutoff=0.6)
        return str(self) + (f"; did you mean {' or '.join(close)}?" if close else "")


@cache
def _field_types(schema: type) -> dict[str, Any]:
    return get_type_hints(schema)


def _optional_inner(declared: Any) -> Any | None:
    """``T`` for ``T | None``, else None."""
    if get_origin(declared) in (Union, types.UnionType) and type(None) in get_args(declared):
        return next(arg for arg in get_args(declared) if arg is not type(None))
    return None


def declared_type(key: str) -> Any:
    """The type the schema declares for a dotted key; ``Any`` inside an open mapping such as ``env.kwargs``."""
    declared: Any = Config
    parts = key.split(".")
    for index, part in enumerate(parts):
        if declared is Any or get_origin(declared) is dict:
            return Any
        if get_origin(declared) is list and part.isdigit():  # an element: model.hidden_sizes.0
            declared = get_args(declared)[0]
            continue
        known = _field_types(declared) if isinstance(declared, type) and is_dataclass(declared) else {}
        if part not in known:
            raise UnknownKey(".".join(parts[:index]), part, list(known))
        declared = known[part]
    return declared


def expected(declared: Any) -> str:
    """What a value of the declared type looks like, in words: 'an integer or null', 'a list of integers'."""
    if (inner := _optional_inner(declared)) is not None:
        return f"{expected(inner)} or null"
    if get_origin(declared) is list:
        return f"a list of {TYPE_NAMES.get(get_args(declared)[0], ('', 'values'))[1]}"
    if get_origin(declared) is dict:
        return "a mapping, e.g. {key: value}"
    if isinstance(declared, type) and is_dataclass(declared):
        return f"a group of keys ({', '.join(_field_types(declared))})"
    return TYPE_NAMES.get(declared, (getattr(declared, "__name__", str(declared)),))[0]


def type_reason(key: str, value: Any) -> str:
    declared = declared_type(key)
    if value is None:
        return f"cannot be null; it must be {expected(declared)}"
    reason = f"must be {expected(declared)}"
    if declared is int and isinstance(value, float) and value.is_integer():
        reason += f"; write {int(value)}"
    return reason


def written(override: Override) -> str:
    """The override as written (Hydra's parser keeps every override's line)."""
    assert override.input_line is not None
    return override.input_line


def _value_text(override: Override) -> str:
    return override.input_line.partition("=")[2] if override.input_line else ""


def shown_value(override: Override) -> Any:
    """The override's value as parsed, or its text when it is a sweep (several values)."""
    return _value_text(override) if override.is_sweep_override() else override.value()


def parse_overrides(overrides: Sequence[str]) -> list[Override]:
    """Hydra's reading of the overrides; a ConfigError for the first that does not parse."""
    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except OverrideParseException as error:
        key, _, text = error.override.lstrip("+~").partition("=")
        raise ConfigError(key, text, f"is not a valid override ({_parse_detail(error)}); the form is KEY=VALUE, "
                                     "see https://hydra.cc/docs/advanced/override_grammar/basic") from None


def _parse_detail(error: OverrideParseException) -> str:
    """ANTLR's words for what went wrong, without Hydra's frame around them."""
    lines = [line for line in error.message.splitlines() if not line.startswith(("Error parsing override", "See "))]
    if lines[0].startswith(LEXER_ERROR) and len(lines) > 1 and "^" in lines[1]:  # a ^ marks where reading failed
        return f"cannot read {error.override[lines[1].index('^') - len(LEXER_ERROR):]!r}"
    return "no '='" if lines[0].startswith("missing EQUAL") else lines[0].strip()


def workers_option(count: int) -> str:
    """The schedule group's option ``workers_<count>``: the config that sets ``algo.num_workers=<count>``, listed after
    a schedule (``+schedule=[a2c_workers,workers_4]``). Registered in Hydra's ConfigStore on first use; Hydra's
    launchers carry the ConfigStore into the processes that run the jobs."""
    name = f"workers_{count}"
    ConfigStore.instance().store(group=SCHEDULE_GROUP, name=name, node={"algo": {"num_workers": count}},
                                 package="_global_")
    return name


def group_choices(override: Override) -> list[Any]:
    """The options a config group override names: one, a list (``[a2c_workers,workers_4]``) or a sweep of them."""
    value = override.value()
    elements: list[Any]
    if isinstance(value, ChoiceSweep):
        elements = value.list
    elif override.is_sweep_override():
        elements = list(override.sweep_string_iterator())
    else:
        elements = [value]
    return [name for element in elements for name in (element if isinstance(element, list) else [element])]


def _register_worker_options(overrides: Sequence[Override]) -> None:
    """Register each ``workers_N`` option the overrides name, so that a job's overrides compose in any process."""
    for override in overrides:
        if override.key_or_group == SCHEDULE_GROUP and not override.is_delete():
            for choice in group_choices(override):
                if match := WORKERS_OPTION.fullmatch(str(choice)):
                    workers_option(int(match["count"]))


def _check_group_options(override: Override, loader: ConfigLoader) -> None:
    if override.is_delete() or override.value_type == ValueType.GLOB_CHOICE_SWEEP:
        return  # a glob sweep picks among the options itself
    group, value = override.key_or_group, override.value()
    choices = group_choices(override)
    options = loader.get_group_options(group)
    if not options:
        raise ConfigError(group, value, "there is no such config group")
    for choice in choices:
        if choice not in options:
            raise ConfigError(group, choice, f"no such {group} config; one of {', '.join(options)}")


def _check_override(override: Override, loader: ConfigLoader, groups: Sequence[str]) -> None:
    key = override.key_or_group
    if not key:
        raise ConfigError(key, shown_value(override), "an override needs a key: KEY=VALUE")
    if "/" in key or key in groups:  # hydra/launcher too
        _check_group_options(override, loader)
        return
    if override.is_hydra_override():
        return
    try:
        declared_type(key)
    except UnknownKey as unknown:
        raise ConfigError(key, shown_value(override), unknown.reason([] if unknown.parent else groups)) from None
    if override.is_delete():
        raise ConfigError(key, shown_value(override), "keys of the schema cannot be deleted; set a value instead")


def refuse_sweeps(overrides: Sequence[str]) -> None:
    """ConfigError for an override with several values: only a multirun (``-m``) runs them."""
    for override in parse_overrides(overrides):
        if override.is_sweep_override():
            raise ConfigError(override.key_or_group, shown_value(override),
                              "several values run only as a multirun (add -m); a list is written [a,b]")


def compose_checked(overrides: Sequence[str], run_mode: RunMode = RunMode.RUN,
                    config_name: str = "config") -> DictConfig:
    """The config Hydra composes for these overrides (with its ``hydra`` node), or a ConfigError.

    Needs an initialized Hydra: inside ``hydra.main`` or ``initialize_config_dir``. In multirun mode
    Hydra leaves swept keys at their defaults; each job's own composition checks their values.
    """
    parsed = parse_overrides(overrides)
    _register_worker_options(parsed)
    global_hydra = GlobalHydra.instance()
    loader = global_hydra.config_loader()
    groups = [group for group in loader.list_groups("") if group != "hydra"]
    for override in parsed:
        _check_override(override, loader, groups)
    assert global_hydra.hydra is not None  # initialized: it gave its config loader
    try:
        return global_hydra.hydra.compose_config(config_name, list(overrides), run_mode=run_mode)
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        raise composition_error(error, parsed) from None


def _causes(error: BaseException | None) -> Iterator[BaseException]:
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def _value_of(key: str, overrides: Sequence[Override], default: Any) -> Any:
    matching = [override for override in overrides if override.key_or_group == key]
    return shown_value(matching[-1]) if matching else default


def _text_of(key: str, overrides: Sequence[Override]) -> str:
    """The value of the override of ``key`` as written, for a message that says how to write it instead."""
    return next((_value_text(o) for o in reversed(overrides) if o.key_or_group == key), "VALUE")


def composition_error(error: BaseException, overrides: Sequence[Override]) -> ConfigError:
    """One ConfigError for whatever Hydra or OmegaConf raised while composing these overrides."""
    for cause in _causes(error):
        if isinstance(cause, OmegaConfBaseException) and cause.full_key:
            return omegaconf_error(cause, overrides)
        for pattern, reason in HYDRA_MESSAGES:
            if match := re.search(pattern, str(cause)):
                key = match["key"]
                reason = reason.format(key=key, text=_text_of(key, overrides))
                return ConfigError(key, _value_of(key, overrides, None), reason)
    message = next((str(cause) for cause in _causes(error) if str(cause).strip()), type(error).__name__)
    named = [override for override in overrides if f"'{override.key_or_group}" in message]
    if not named:  # nothing on the command line is named: a config file is at fault
        return ConfigError("overrides", " ".join(written(o) for o in overrides), message.strip().splitlines()[0])
    return ConfigError(named[0].key_or_group, shown_value(named[0]), message.strip().splitlines()[0])


def omegaconf_error(error: OmegaConfBaseException, overrides: Sequence[Override]) -> ConfigError:
    """A ConfigError for an OmegaConf error about one key (its ``full_key``)."""
    assert error.full_key is not None  # an error about one key, as every caller's is
    key = re.sub(r"\[\d+\]$", "", error.full_key)  # a list element's error is about the list
    value = _value_of(key, overrides, error.value)
    reason = (error.msg or type(error).__name__).strip().splitlines()[0]
    hydra_key = key.split(".")[0] == "hydra"
    try:
        if isinstance(error, ConfigKeyError | ConfigAttributeError):
            reason = _missing_key_reason(key, error, overrides)
        elif hydra_key:
            pass  # Hydra's schema is not ours to describe; OmegaConf's first line names the type
        elif isinstance(error, ValidationError):
            reason = type_reason(key, value)
        elif isinstance(error, MissingMandatoryValue):
            reason = "must be set"
        elif isinstance(error, InterpolationResolutionError):
            reason = f"cannot be resolved: {reason}"
    except UnknownKey as unknown:
        reason = unknown.reason()
    return ConfigError(key, value, reason)


def _missing_key_reason(key: str, error: OmegaConfBaseException, overrides: Sequence[Override]) -> str:
    """Why a key that OmegaConf did not find cannot be set: unknown (UnknownKey), or new to an open mapping."""
    parent, _, name = key.rpartition(".")
    if key.split(".")[0] == "hydra":
        known = error.parent_node.keys() if isinstance(error.parent_node, DictConfig) else []
        raise UnknownKey(parent, name, [str(option) for option in known])
    declared_type(key)  # known to the schema: a new key of an open mapping such as env.kwargs
    return f"is not set; add it with +{key}={_text_of(key, overrides)}"


def validate_checked(cfg: DictConfig, overrides: Sequence[str] = ()) -> None:
    """:func:`~experiments.config.validate`, with OmegaConf's errors (an unresolvable interpolation) as ConfigError;
    then, for a config Hydra composed (with its ``hydra`` node), :func:`check_env_settings`."""
    try:
        validate(cfg)
    except OmegaConfBaseException as error:
        raise omegaconf_error(error, parse_overrides(overrides)) from None
    if "hydra" in cfg:
        check_env_settings(cfg, overrides)


def inherited_env_settings(cfg: DictConfig, overrides: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """The id of the env that ``cfg``'s env group option (with its tuned settings) is made for, and the
    :data:`ENV_SETTINGS` that ``cfg`` keeps from that option although ``env.id`` names another env. None unless an
    override sets ``env.id``, and none that an override sets (nor an experiment's own budget, which differs)."""
    given = {override.key_or_group for override in parse_overrides(overrides)}
    choices = cfg.hydra.runtime.choices
    if "env.id" not in given or "env" not in choices or "algo" not in choices or GlobalHydra.instance().hydra is None:
        return cfg.env.id, {}  # (outside an initialized Hydra the env's own config cannot be composed: not checked)
    other = _env_config(cfg.hydra.job.config_name or "config", choices.env, choices.algo)
    if other.env.id == cfg.env.id:
        return other.env.id, {}
    kept = {key: OmegaConf.select(cfg, key) for key in ENV_SETTINGS if key not in given}
    return other.env.id, {key: value for key, value in kept.items()
                          if value is not None and value == OmegaConf.select(other, key)}


@cache
def _env_config(config_name: str, env: str, algo: str) -> DictConfig:
    """The config of an env option as the algorithm's runs get it (its tuned settings too): once per process."""
    hydra = GlobalHydra.instance().hydra
    assert hydra is not None
    return hydra.compose_config(config_name, [f"env={env}", f"algo={algo}"], run_mode=RunMode.RUN)


def check_env_settings(cfg: DictConfig, overrides: Sequence[str]) -> None:
    """Refuse a study's job, and warn (once, in one line) about any other run, whose env is given by ``env.id`` but
    keeps another env's name, budget or threshold (:func:`inherited_env_settings`), naming the keys to set: a
    study compares schedules by that threshold within that budget, and its report labels the env by that name."""
    other_id, kept = inherited_env_settings(cfg, overrides)
    if not kept:
        return
    settings = " and ".join(f"{key}={value}" for key, value in kept.items())
    reason = (f"keeps env={cfg.hydra.runtime.choices.env}'s {settings} (set for {other_id}); set "
              f"{' and '.join(kept)} for this env" + (" (env.solved_return=null: no threshold)"
                                                      if "env.solved_return" in kept else ""))
    if "experiment" in cfg.hydra.runtime.choices:
        raise ConfigError("env.id", cfg.env.id, reason)
    warning = f"warning: env.id={cfg.env.id!r}: {reason}"
    if warning not in _warned:
        _warned.add(warning)
        print(warning, file=sys.stderr)
