"""The run directory's line files: the CSV files of ``RECORD_COLUMNS`` and ``events.jsonl``, and the record's fault.

Each file is appended in whole lines and flushed as the run goes, so that a killed run keeps everything up to its
last flush and no failure the process survives (a full disk included) leaves a torn line. A kill in the middle of a
write can: a resume cuts that line off and says what it held (:meth:`RunFiles.drop_rows_after`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from algorithms.infra.checkpoint import write_file
from experiments.columns import RECORD_COLUMNS


def replace_file(path: Path, tmp: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all: ``data`` goes to ``tmp``, which then replaces it."""
    write_file(tmp, data)
    os.replace(tmp, path)


def keep_rows(path: Path, keep: Callable[[dict[str, str]], bool]) -> None:
    """Rewrite a CSV keeping the header and the complete rows for which ``keep(row)`` is true."""
    # bytes, not text: the rows end in \r\n, as the csv module writes them
    lines = [line for line in path.read_bytes().decode().splitlines(keepends=True) if line.endswith("\n")]
    kept = lines[:1]
    if lines:
        fields = next(csv.reader(lines[:1]))
        kept += [line for line, values in zip(lines[1:], csv.reader(lines[1:]), strict=True)
                 if keep(dict(zip(fields, values, strict=True)))]
    replace_file(path, path.with_suffix(".tmp"), "".join(kept).encode())


def _format(value: Any) -> Any:
    """A CSV cell: NaN (a statistic with nothing to average) is left empty."""
    if isinstance(value, float) and math.isnan(value):
        return ""
    return value


class LineLog:
    """An append-only text file written in whole lines.

    Lines wait in memory until :meth:`flush`, which appends them all or, when the write fails (a full disk),
    cuts the file back to its last complete line and raises an OSError naming the file.
    """

    def __init__(self, path: Path, append: bool, header: str = ""):
        self.path = path
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if append else os.O_TRUNC), 0o644)
        self.size = os.fstat(self.fd).st_size
        self.pending: list[str] = [header] if header and not self.size else []

    def add(self, line: str) -> None:
        self.pending.append(line)

    def flush(self) -> None:
        if not self.pending:
            return
        # Taken first: a signal handler that logs an event during this write flushes only its own line.
        lines, self.pending = self.pending, []
        data = memoryview("".join(lines).encode())
        try:
            written = 0
            while written < len(data):
                written += os.write(self.fd, data[written:])
            os.fsync(self.fd)
        except OSError as error:
            os.ftruncate(self.fd, self.size)
            raise OSError(error.errno, error.strerror, str(self.path)) from error
        self.size += len(data)

    def close(self) -> None:
        """Close the file; lines not flushed are dropped (after a failed flush they must not be written)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class CsvLog(LineLog):
    """A :class:`LineLog` of CSV rows under a fixed header."""

    def __init__(self, path: Path, columns: tuple[str, ...], append: bool):
        self._text = io.StringIO()
        self._writer = csv.writer(self._text)
        super().__init__(path, append, header=self._line(columns))

    def _line(self, values: Any) -> str:
        self._text.seek(0)
        self._text.truncate()
        self._writer.writerow(values)
        return self._text.getvalue()

    def write(self, row: tuple[Any, ...]) -> None:
        self.add(self._line([_format(value) for value in row]))


TORN_TEXT_SHOWN = 200  # characters of a torn line kept in its record_repaired event


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run continues: its checkpoint's env steps and updates, and the last metrics row on the grid."""

    last_row: int
    env_steps: int
    updates: int

    def kept_rows(self) -> dict[str, Callable[[dict[str, str]], bool]]:
        """Per CSV file, whether a row stays: rows past the checkpoint are the resumed run's to write again."""
        return {
            "metrics": lambda row: int(row["env_steps"]) <= self.last_row,
            "episodes": lambda row: int(row["env_steps"]) <= self.env_steps,
            "updates": lambda row: int(row["update"]) <= self.updates,
            "evals": lambda row: int(row["env_steps"]) <= self.env_steps,
        }

    def rewrites(self, name: str, torn: str) -> bool:
        """Whether the resumed run writes the row that ``torn`` begins again: its first cell (the column the row is
        kept by) is whole and places it past the checkpoint."""
        first, comma, _ = torn.partition(",")
        try:
            return bool(comma) and not self.kept_rows()[name]({RECORD_COLUMNS[name][0]: first})
        except ValueError:
            return False


@dataclass(frozen=True)
class Repair:
    """A torn last line cut off a file on resume: its bytes, the start of its text and the rows it held."""

    file: str
    bytes_cut: int
    torn_text: str
    rows_restored: int
    rows_lost: int


class WriteGuard:
    """The record's *fault*: its first failed write (a full disk), which fails the run. Once the record has failed,
    no file is written to again, so that they all end where they agreed."""

    def __init__(self) -> None:
        self.fault: BaseException | None = None

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """Around each of the record's writes: refused after the fault, and the first OSError becomes the fault."""
        if self.fault is not None:
            raise self.fault
        try:
            yield
        except OSError as error:
            self.keep(error)
            raise

    def keep(self, error: BaseException) -> None:
        """Make ``error`` the fault, unless the record already failed (the first failure is the one to report)."""
        self.fault = self.fault or error


class RunFiles:
    """A run directory's ``<name>.csv`` files (``RECORD_COLUMNS``) and its ``events.jsonl``."""

    def __init__(self, run_dir: Path, guard: WriteGuard):
        self.run_dir = run_dir
        self.guard = guard
        self.logs: dict[str, CsvLog] = {}
        self.events: LineLog | None = None

    def open(self, append: bool) -> None:
        """Open every file, appending to a resumed run's or starting each afresh."""
        for name, columns in RECORD_COLUMNS.items():  # one at a time: a failure closes those already open
            self.logs[name] = CsvLog(self.run_dir / f"{name}.csv", columns, append=append)
        self.events = LineLog(self.run_dir / "events.jsonl", append=append)

    def write(self, name: str, row: tuple[Any, ...]) -> None:
        """Add a row to ``<name>.csv``; it is written with the next :meth:`flush`."""
        self.logs[name].write(row)

    def write_now(self, name: str, rows: list[tuple[Any, ...]]) -> None:
        """Write ``rows`` to ``<name>.csv`` at once, not waiting for the next :meth:`flush`."""
        with self.guard.writing():
            for row in rows:
                self.logs[name].write(row)
            self.logs[name].flush()

    def flush(self) -> None:
        with self.guard.writing():
            for log in self.logs.values():
                log.flush()

    def write_event(self, entry: dict[str, Any]) -> None:
        with self.guard.writing():
            self._append_event(entry)

    def write_end_event(self, entry: dict[str, Any]) -> None:
        """The event that ends the run: written even after the fault, for it says how the run ended, into an
        ``events.jsonl`` opened for it when the run failed before opening its own."""
        if self.events is None:
            self.events = LineLog(self.run_dir / "events.jsonl", append=True)
        self._append_event(entry)

    def _append_event(self, entry: dict[str, Any]) -> None:
        assert self.events is not None, "events.jsonl is opened with the run's files"
        self.events.add(json.dumps(entry, default=str) + "\n")
        self.events.flush()

    def drop_rows_after(self, resumed: ResumePoint) -> list[Repair]:
        """Before a resume: rows written after its checkpoint are rewritten by the resumed run, and a row that ended
        the run off the grid (past ``last_row``) is rewritten at the grid; drop them so that nothing is duplicated.
        A line torn by a kill is cut off first; the repairs are returned, for the record to report."""
        with self.guard.writing():
            repairs = [repair for name in (*RECORD_COLUMNS, "events") if (repair := self._cut_torn_line(name, resumed))]
            for name, keep in resumed.kept_rows().items():
                if (self.run_dir / f"{name}.csv").exists():
                    keep_rows(self.run_dir / f"{name}.csv", keep)
        return repairs

    def _cut_torn_line(self, name: str, resumed: ResumePoint) -> Repair | None:
        """Cut a partial last line off ``<name>.csv`` (or events.jsonl). A CSV row past the checkpoint is restored:
        the resumed run writes it again; one it cannot place, and a torn event, is lost."""
        path = self.run_dir / (f"{name}.csv" if name in RECORD_COLUMNS else "events.jsonl")
        data = path.read_bytes() if path.exists() else b""
        torn = data[data.rfind(b"\n") + 1:]
        if not torn:
            return None
        os.truncate(path, len(data) - len(torn))
        text = torn.decode(errors="replace")
        restored = name in RECORD_COLUMNS and resumed.rewrites(name, text)
        return Repair(path.name, len(torn), text[:TORN_TEXT_SHOWN], rows_restored=int(restored),
                      rows_lost=int(not restored))

    def close(self) -> None:
        """Close every file; lines not flushed are dropped."""
        for log in (*self.logs.values(), self.events):
            if log is not None:
                log.close()
