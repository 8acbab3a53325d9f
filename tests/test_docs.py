"""The documentation cannot drift from the code: the README's schedule table is ``algorithms.SCHEDULES``, the run
record's column lists are ``experiments/columns.py``, the module map of docs/architecture.md is the source tree,
every relative link resolves, and every result page says where it came from. All of these read files only.

One test trains: it follows docs/extending.md's env recipe as written, saving its code blocks where their comments
say, in a copy of the checkout, and runs both of its command lines there.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from algorithms import SCHEDULES
from experiments.columns import RECORD_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
RESULTS = DOCS / "results"
PACKAGES = ("algorithms", "experiments", "analysis")


# --------------------------------------------------------------------------- reading Markdown
def section(text: str, heading: str) -> str:
    """The text under the first heading (any level) that reads ``heading``, up to the next heading of its level or
    above."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = re.match(r"(#+) (.*)", line)
        if match and match.group(2).strip() == heading:
            level, body = len(match.group(1)), []
            in_code = False
            for rest in lines[index + 1:]:
                in_code ^= rest.startswith("```")
                ended = re.match(r"(#+) ", rest)
                if not in_code and ended and len(ended.group(1)) <= level:
                    break
                body.append(rest)
            return "\n".join(body)
    raise AssertionError(f"no heading {heading!r}")


def table_rows(text: str) -> list[list[str]]:
    """The cells of every row of the first Markdown table in ``text``, header and rule left out."""
    rows, started = [], False
    for line in text.splitlines():
        if line.startswith("|"):
            started = True
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                rows.append(cells)
        elif started:
            break
    return rows[1:]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """Every fenced code block as (language, body)."""
    return re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.M | re.S)


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# --------------------------------------------------------------------------- the schedule table
def readme_schedules(text: str) -> dict[tuple[str, str, str], str]:
    """(algo, mode, backend) -> ``+schedule`` name, from the README's schedule table."""
    listed: dict[tuple[str, str, str], str] = {}
    for cells in table_rows(section(text, "The schedules")):
        (name,), (algo,), (mode,) = ticked(cells[0]), ticked(cells[1]), ticked(cells[2])
        for backend in (part.strip() for part in cells[3].split(",")):
            assert (algo, mode, backend) not in listed, f"{algo}/{mode}/{backend} is listed twice"
            listed[(algo, mode, backend)] = name
    return listed


def schedule_file(name: str) -> tuple[str, str]:
    """The (algo, mode) that ``+schedule=name`` selects, read from conf/schedule/NAME.yaml."""
    values = yaml.safe_load((ROOT / "conf" / "schedule" / f"{name}.yaml").read_text())
    (algo,) = [entry["override /algo"] for entry in values["defaults"] if "override /algo" in entry]
    mode = (values.get("algo") or {}).get("mode")  # else the algorithm's own default mode
    return algo, mode or yaml.safe_load((ROOT / "conf" / "algo" / f"{algo}.yaml").read_text())["mode"]


def test_the_readme_lists_every_schedule_of_the_table_and_nothing_else():
    listed = readme_schedules(README.read_text())
    assert set(listed) == set(SCHEDULES), (
        f"missing from the README: {sorted(set(SCHEDULES) - set(listed))}; "
        f"not in algorithms.SCHEDULES: {sorted(set(listed) - set(SCHEDULES))}")


def test_the_readme_names_every_schedule_config_with_its_algorithm_and_mode():
    listed = readme_schedules(README.read_text())
    files = {path.stem for path in (ROOT / "conf" / "schedule").glob("*.yaml")}
    assert set(listed.values()) == files
    for (algo, mode, _), name in listed.items():
        assert schedule_file(name) == (algo, mode), f"+schedule={name} in the README's row {algo}/{mode}"


# --------------------------------------------------------------------------- the run record's columns
def documented_columns(text: str) -> dict[str, tuple[str, ...]]:
    """file name (metrics, episodes, ...) -> its columns, from the table of a run-record page's Columns section."""
    columns = {}
    for cells in table_rows(section(text, "Columns")):
        (file,) = ticked(cells[0])
        columns[file.removesuffix(".csv")] = tuple(ticked(cells[1]))
    return columns


def test_the_run_record_page_lists_every_column_in_order():
    assert documented_columns((DOCS / "run_record.md").read_text()) == RECORD_COLUMNS


def test_the_architecture_page_points_to_the_column_lists():
    run_record = section((DOCS / "architecture.md").read_text(), "The run record")
    assert "run_record.md#columns" in run_record
    assert {f"`{name}.csv`" for name in RECORD_COLUMNS} <= set(re.findall(r"`\w+\.csv`", run_record))


# --------------------------------------------------------------------------- the module map
def mapped_modules(text: str) -> set[str]:
    """The modules the tree of docs/architecture.md's "The folders and their arrows" names, as paths: a line that
    starts with ``name/`` opens a folder inside the nearest less indented folder, and the ``*.py`` names a line starts
    with are modules of the folder it is indented under."""
    (_, tree), *_ = code_blocks(section(text, "The folders and their arrows"))
    folders: list[tuple[int, str]] = []
    modules = set()
    for line in tree.splitlines():
        if not line.strip():
            continue
        indent, words = len(line) - len(line.lstrip()), line.split()
        while folders and folders[-1][0] >= indent:
            folders.pop()
        parent = folders[-1][1] if folders else ""
        if words[0].endswith("/"):
            folders.append((indent, parent + words[0]))
            continue
        for word in words:
            if not re.fullmatch(r"\w+\.py,?", word):
                break
            modules.add(parent + word.rstrip(","))
    return modules


def source_modules() -> set[str]:
    return {path.relative_to(ROOT).as_posix() for package in PACKAGES for path in (ROOT / package).rglob("*.py")}


def test_the_module_map_names_every_module_and_only_modules_that_exist():
    mapped, tree = mapped_modules((DOCS / "architecture.md").read_text()), source_modules()
    assert mapped - tree == set(), "in docs/architecture.md's map but not in the tree"
    unmapped = {path for path in tree - mapped if not path.endswith("__init__.py")}
    assert unmapped == set(), "modules docs/architecture.md's map does not name"


# --------------------------------------------------------------------------- links, sizes, provenance
def markdown_files() -> list[Path]:
    return [README, ROOT / "CHANGELOG.md", *sorted(DOCS.rglob("*.md"))]


def anchors(path: Path) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.M | re.S)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
            for heading in re.findall(r"^#+ (.*)$", text, flags=re.M)}


@pytest.mark.parametrize("page", markdown_files(), ids=lambda path: path.relative_to(ROOT).as_posix())
def test_every_relative_link_and_image_resolves(page: Path):
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue
        file, _, anchor = target.partition("#")
        path = (page.parent / file).resolve() if file else page
        if not path.exists():
            broken.append(target)
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(target)
    assert broken == []


def test_the_readme_is_a_front_door_of_at_most_15_kb():
    assert len(README.read_bytes()) <= 15 * 1024


def test_docs_results_holds_pages_tables_and_figures_only():
    files = [path for path in RESULTS.rglob("*") if path.is_file()]
    assert sum(path.stat().st_size for path in files) <= 5 * 1024 * 1024
    assert [path for path in files if path.suffix in (".pdf", ".tex")] == []
    raw = [path for path in files if path.name in ("meta.json", "metrics.csv", "updates.csv", "episodes.csv")]
    assert raw == [], "run directories belong in runs/, not docs/results"
    assert [path for path in files if path.suffix == ".md" and "/tmp/" in path.read_text()] == []


@pytest.mark.parametrize("result", sorted(path.name for path in RESULTS.iterdir() if path.is_dir()))
def test_every_result_page_states_its_commit_date_and_command(result: str):
    pages = [path for path in (RESULTS / result / "README.md", RESULTS / result / "report.md") if path.exists()]
    assert pages, f"docs/results/{result} has no README.md or report.md"
    text = pages[0].read_text()
    assert re.search(r"\b[0-9a-f]{7}\b", text), "no commit"
    assert re.search(r"\b20\d\d-\d\d-\d\d\b", text), "no date"
    assert any("python" in body for _, body in code_blocks(text)), "no command"


# --------------------------------------------------------------------------- the env recipe, followed as written
def recipe_files(text: str) -> dict[str, str]:
    """The code blocks of docs/extending.md's env section whose first or second line is a comment naming the file
    they are (``# my_pkg/envs.py``), by that path."""
    files = {}
    for _, body in code_blocks(section(text, "An env")):
        for line in body.splitlines()[:2]:
            if match := re.match(r"#\s*([\w/]+\.(?:py|yaml))\b", line):
                files[match.group(1)] = body
    return files


def recipe_commands(text: str) -> list[list[str]]:
    """The single-run command lines of the env section, joined across backslashes, as argument lists."""
    commands = []
    for language, body in code_blocks(section(text, "An env")):
        if language != "bash":
            continue
        for command in body.replace("\\\n", " ").splitlines():
            words = command.split("#")[0].split()
            if words[1:3] == ["-m", "experiments.train"] and "-m" not in words[3:]:
                commands.append(words[3:])
    return commands


def test_the_env_recipe_of_the_extending_page_trains_as_written(tmp_path: Path):
    text = (DOCS / "extending.md").read_text()
    files, commands = recipe_files(text), recipe_commands(text)
    assert set(files) == {"my_pkg/envs.py", "conf/env/maze.yaml"}
    assert len(commands) == 2 and any("env=maze" in command for command in commands)
    checkout = tmp_path / "checkout"  # the real conf/ stays untouched by the new env file
    for folder in (*PACKAGES, "conf"):
        shutil.copytree(ROOT / folder, checkout / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for path, body in files.items():
        (checkout / path).parent.mkdir(parents=True, exist_ok=True)
        (checkout / path).write_text(body)
    (checkout / "my_pkg" / "__init__.py").touch()
    for index, command in enumerate(commands):
        run_dir = tmp_path / f"run{index}"
        short = [word for word in command if not word.startswith("total_env_steps=")]
        args = [*short, "total_env_steps=400", "log_interval=100", "eval.episodes=2", "quiet=true",
                "logger.wandb.mode=disabled", f"hydra.run.dir={run_dir}"]
        done = subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=checkout,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "warning" not in done.stderr, done.stderr
        meta = json.loads((run_dir / "meta.json").read_text())
        assert (meta["status"], meta["env_id"], meta["env_name"]) == ("completed", "my_pkg.envs:Maze-v0", "maze")
        assert meta["final"]["env_steps"] >= 400
