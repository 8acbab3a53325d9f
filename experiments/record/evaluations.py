"""The run record's evaluations: when one is due, where it runs, and its row of ``evals.csv``.

Where it runs depends on who is waiting. When the whole run trains in the trainer process (``single``, A2C's
vector mode, a3c with one worker), training waits for the evaluation, and its seconds are taken out of the
run's wall-clock. When workers train in processes (or Ray actors) of their own, the trainer evaluates in a
background thread while they go on, and its rows are written as they finish, in order; the workers never wait
for it (on a machine with spare cores it takes nothing from them). Either way ``eval_seconds`` says what it took.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, cast

import numpy as np
from omegaconf import DictConfig

from algorithms import schedule_for
from algorithms.config import RunConfig
from algorithms.core.evaluation import EvalResult, Evaluator, next_evaluation_at
from algorithms.infra.messages import EvalSnapshot

Row = tuple[Any, ...]  # one row of evals.csv (experiments.columns.EVAL_COLUMNS)


def eval_row(snapshot: EvalSnapshot, wall_time: float, result: EvalResult, deterministic: bool) -> Row:
    returns, lengths = np.asarray(result.returns), np.asarray(result.lengths)
    return (snapshot.env_steps, wall_time, snapshot.policy_version, len(returns),
            float(returns.mean()), float(returns.std()), float(returns.min()), float(returns.max()),
            float(lengths.mean()), deterministic, result.seconds,
            " ".join(f"{value:g}" for value in result.returns), " ".join(str(value) for value in result.lengths))


class Evaluations:
    """Evaluations of one run, from the env step it starts at (0, or where it resumes)."""

    def __init__(self, cfg: DictConfig, env_steps: int):
        self.cfg = cfg
        schedule = schedule_for(cfg.algo.name, cfg.algo.mode, cfg.backend)
        self.in_trainer = schedule.trains_in_trainer(cfg.algo.num_workers)  # then training waits for evaluation
        self.next_at = next_evaluation_at(env_steps, cfg.eval, cfg.total_env_steps)
        self.paused_seconds = 0.0  # training time spent waiting for evaluations: not training's wall-clock
        self._evaluator: Evaluator | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[EvalSnapshot, float, Future[EvalResult]]] = deque()

    def due(self, env_steps: int) -> bool:
        return env_steps >= self.next_at

    def evaluate(self, snapshot: EvalSnapshot, wall_time: float) -> list[Row]:
        """Evaluate ``snapshot`` (taken at training time ``wall_time``); return the rows finished by now."""
        self.next_at = next_evaluation_at(snapshot.env_steps, self.cfg.eval, self.cfg.total_env_steps)
        if self.in_trainer:
            result = self._play(snapshot)
            self.paused_seconds += result.seconds
            return [eval_row(snapshot, wall_time, result, self.cfg.eval.deterministic)]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluation")
        self._pending.append((snapshot, wall_time, self._executor.submit(self._play, snapshot)))
        return self.finished()

    def _play(self, snapshot: EvalSnapshot) -> EvalResult:
        if self._evaluator is None:  # built where it plays: in the background thread when there is one
            # The run's structured config (experiments.config.Config), which reads as the RunConfig it extends.
            self._evaluator = Evaluator(cast(RunConfig, self.cfg))
        return self._evaluator.evaluate(snapshot)

    def finished(self) -> list[Row]:
        """The rows of background evaluations that have finished, in the order they were taken; an evaluation
        that raised raises here."""
        rows = []
        while self._pending and self._pending[0][2].done():
            snapshot, wall_time, future = self._pending.popleft()
            if not future.cancelled():
                rows.append(eval_row(snapshot, wall_time, future.result(), self.cfg.eval.deterministic))
        return rows

    def close(self, completed: bool) -> list[Row]:
        """End the evaluations; return the rows still to write. A completed run waits for every evaluation (its
        final one included); a stopped or failed one drops those not yet started and waits for the one playing."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=not completed)
        try:
            return self.finished()
        finally:
            if self._evaluator is not None:
                self._evaluator.close()
