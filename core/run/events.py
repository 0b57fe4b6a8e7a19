"""``events.jsonl``: one writer appends, any number of readers follow.

Every event is one JSON object on one line with ``ts`` (unix seconds) and
``type``, plus ``step`` where it means something; each type's fields are
declared in :mod:`finetty.core.run.event_types`. The writer flushes each
event. Readers keep their byte offset, leave a partial last line for later,
skip lines that are not JSON or that contradict the contract (and count them
in :attr:`EventReader.skipped`: one bad line never stops a reader), and yield
each event exactly once; attaching to a run is reading from offset 0 and then
following.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator

from finetty.core import paths
from finetty.core.run.event_types import TERMINAL, problem

EVENTS_FILE = "events.jsonl"
__all__ = ["EVENTS_FILE", "TERMINAL", "EventReader", "EventWriter", "read_all"]


class EventWriter:
    """Appends events to a run's ``events.jsonl``; the worker's main process is the only writer."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / EVENTS_FILE
        # owner-only, and never through a link planted as events.jsonl (it would redirect every event)
        self._file = os.fdopen(paths.open_nofollow(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "a",
                               encoding="utf-8")
        if _ends_mid_line(self.path):  # a killed writer left half a line: end it, so our first event is whole
            self._file.write("\n")
            self._file.flush()

    def emit(self, type_: str, **fields: Any) -> dict:
        event = {"ts": round(time.time(), 3), "type": type_, **fields}
        self._file.write(json.dumps(event, default=str) + "\n")
        self._file.flush()
        return event

    def close(self) -> None:
        self._file.close()


class EventReader:
    """Reads new complete events from a byte offset; call :meth:`poll` again to follow."""

    def __init__(self, run_dir: Path, offset: int = 0):
        self.path = Path(run_dir) / EVENTS_FILE
        self.offset = offset
        self.skipped = 0
        """complete lines skipped so far: not JSON, or not what the contract declares for their type"""
        self.linked = False
        """True when ``events.jsonl`` is a symbolic link: it is never followed, so nothing is read"""

    def _open(self) -> int | None:
        """The file opened for reading without following a link (a planted link would show another file's lines)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            self.linked = os.path.islink(self.path)
            return None
        self.linked = False
        return fd

    def poll(self, max_bytes: int | None = None) -> list[dict]:
        """Events appended since the last call (only complete lines)."""
        fd = self._open()
        if fd is None:
            return []
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(fd).st_size
            if size < self.offset:  # the file was replaced: start over
                self.offset = 0
                self.skipped = 0
            if size == self.offset:
                return []
            handle.seek(self.offset)
            chunk = handle.read(max_bytes) if max_bytes else handle.read()
        end = chunk.rfind(b"\n")
        if end < 0:
            return []
        self.offset += end + 1
        events, bad = _parse(chunk[: end + 1])
        self.skipped += bad
        return events

    @property
    def at_end(self) -> bool:
        """True when every complete line of the file has been read."""
        fd = self._open()
        if fd is None:
            return True
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(fd).st_size
            if size <= self.offset:
                return True
            if size - self.offset > 2**20:
                return False
            handle.seek(self.offset)  # only a partial last line left (a killed writer's)?
            return b"\n" not in handle.read(size - self.offset)

    def __iter__(self) -> Iterator[dict]:
        return iter(self.poll())


def _ends_mid_line(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _parse(data: bytes) -> tuple[list[dict], int]:
    """The events in ``data`` (whole lines) and how many lines were skipped."""
    events, bad = [], 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if problem(event) is None:
            events.append(event)
        else:
            bad += 1
    return events, bad


def read_all(run_dir: Path) -> list[dict]:
    """Every complete event of a run, in order."""
    return EventReader(run_dir).poll()
