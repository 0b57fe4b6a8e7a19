"""The worker's heartbeat: a daemon thread that says "alive" every few seconds, even inside a long step.

A worker that stops (``kill -STOP``, a hung driver call, a machine swapping
to death) keeps its lock, so the lock alone says "running" forever. The
heartbeat thread rewrites ``heartbeat.json`` in the run directory every
:data:`INTERVAL` seconds with the worker's pid and what it was asked
(``stop_requested``, so ``finetty stop`` can tell "the worker took the
request" from "nothing happened"); readers take the file's age as the time
since the worker last ran (:func:`finetty.core.run.rundir.heartbeat_age`) and
the status rule calls a run whose heartbeat is too old ``stalled``.

A beat is a file rewrite, not an event: events.jsonl stays the run's history.
The thread runs Python between torch's kernels (which let go of the GIL), so a
long step does not silence it; a stopped or hung process does.

A second daemon thread keeps the run's history index (``summary.json``, see
:mod:`finetty.core.run.summary`) up to date every
:data:`~finetty.core.run.summary.INDEX_EVERY` seconds (a thread of its own: a
resume of a long run first folds its whole history, and the beats must not
wait for that); :meth:`Heartbeat.stop` writes it a last time after the final
event.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Callable

from finetty.core.run import rundir
from finetty.core.run.summary import INDEX_EVERY, IndexKeeper

INTERVAL = 1.0
"""seconds between beats; :data:`finetty.core.run.status.STALL_AFTER` is many of them"""


class Heartbeat:
    """Beats for ``run_dir`` from a daemon thread until :meth:`stop`."""

    def __init__(self, run_dir: Path, state: Callable[[], dict] | None = None, interval: float = INTERVAL):
        self.run_dir = Path(run_dir)
        self.state = state
        """what the beat carries besides the pid (the worker's requests), read at each beat"""
        self.interval = interval
        self.index = IndexKeeper(self.run_dir)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="finetty-heartbeat", daemon=True)
        self._indexer = threading.Thread(target=self._keep_index, name="finetty-index", daemon=True)
        self._index_lock = threading.Lock()

    def start(self) -> "Heartbeat":
        self.beat()
        self._thread.start()
        self._indexer.start()
        return self

    def beat(self) -> None:
        record = {"pid": os.getpid(), "ts": round(time.time(), 3)}
        if self.state is not None:
            try:
                record.update(self.state())
            except Exception:  # what the beat carries is a courtesy; the beat itself must go on
                pass
        path = self.run_dir / rundir.HEARTBEAT_FILE
        partial = path.with_name(f".{rundir.HEARTBEAT_FILE}.{os.getpid()}")
        try:
            partial.write_text(json.dumps(record), encoding="utf-8")
            os.replace(partial, path)
        except OSError:  # a full disk: the beat is lost, the run is not
            pass

    def refresh_index(self) -> None:
        with self._index_lock:
            try:
                self.index.refresh()
            except Exception:  # the index is a cache of events.jsonl; readers rebuild what it lacks
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.beat()

    def _keep_index(self) -> None:
        while not self._stop.wait(INDEX_EVERY):
            self.refresh_index()

    def stop(self) -> None:
        """End the threads and bring the index up to date (call after the final event)."""
        self._stop.set()
        for thread in (self._thread, self._indexer):
            if thread.is_alive():
                thread.join(timeout=5)
        self.refresh_index()


def start(run_dir: Path, state: Callable[[], dict] | None = None) -> Heartbeat:
    """Start beating for ``run_dir``; ``state()`` adds fields to each beat."""
    return Heartbeat(run_dir, state).start()
