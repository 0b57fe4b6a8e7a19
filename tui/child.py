"""The app's side of a child process that does model work (``finetty.core.results.session``'s protocol).

The app imports no torch, ever: whatever needs a model (chat, eval, export,
the dataset preview) runs in a child that speaks JSON lines. ``Child`` starts
the process on the first request, and ``call(op, **params)`` sends a request
and returns a ``Call``: iterate it (in a thread worker: it blocks) for the
replies as they come, or ``wait()`` for the result. ``cancel()`` asks the child
to end that request early. If the child dies, every open call ends with an
error carrying the last line the child wrote to stderr.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import subprocess
import sys
import threading
from collections import deque
from typing import Any, Iterator

SESSION = "finetty.core.results.session"
FINAL = ("done", "error")


class ChildError(Exception):
    """A request ended with an error (the child's one-line message)."""


class Call:
    """One request in flight: its replies, in order, ending with ``done`` or ``error``."""

    def __init__(self, child: "Child", request_id: int, op: str):
        self.child, self.id, self.op = child, request_id, op
        self.replies: queue.Queue[dict] = queue.Queue()
        self.result: Any = None
        self.error: str | None = None
        self.finished = threading.Event()

    def __iter__(self) -> Iterator[dict]:
        """Every reply, the last one (``done`` or ``error``) included; blocks between them."""
        while True:
            reply = self.replies.get()
            yield reply
            if reply.get("type") in FINAL:
                return

    def wait(self) -> Any:
        """The result; ``ChildError`` when the request failed."""
        for reply in self:
            pass
        if self.error is not None:
            raise ChildError(self.error)
        return self.result

    def cancel(self) -> None:
        if not self.finished.is_set():
            self.child.send({"op": "cancel", "target": self.id})

    stop = cancel

    def _deliver(self, reply: dict) -> None:
        if reply.get("type") == "done":
            self.result = reply.get("result")
        elif reply.get("type") == "error":
            self.error = str(reply.get("error"))
        if reply.get("type") in FINAL:
            self.finished.set()
        self.replies.put(reply)


class Child:
    """A child process speaking the session protocol; ``module`` is run with ``python -m``."""

    def __init__(self, module: str = SESSION):
        self.module = module
        self.process: subprocess.Popen | None = None
        self.calls: dict[int, Call] = {}
        self.stderr_tail: deque[str] = deque(maxlen=40)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._closed = False

    def _start(self) -> subprocess.Popen:
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
        process = subprocess.Popen([sys.executable, "-m", self.module], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                                   errors="replace", env=env, bufsize=1)
        threading.Thread(target=self._read, args=(process,), name=f"child-{self.module}", daemon=True).start()
        self._stderr_reader = threading.Thread(target=self._read_stderr, args=(process,), name="child-stderr",
                                               daemon=True)
        self._stderr_reader.start()
        return process

    def call(self, op: str, **params: Any) -> Call:
        """Send a request; the child starts on the first one."""
        with self._lock:
            if self._closed:
                raise ChildError("the model process was closed")
            if self.process is None:
                self.process = self._start()
            call = Call(self, next(self._ids), op)
            self.calls[call.id] = call
        if not self.send({"id": call.id, "op": op, **params}):
            self._end(call, self._why())
        return call

    def send(self, message: dict) -> bool:
        with self._lock:
            process = self.process
            if process is None or process.stdin is None:
                return False
            try:
                process.stdin.write(json.dumps(message) + "\n")
                process.stdin.flush()
            except (OSError, ValueError):  # the child is gone (the reader says why)
                return False
        return True

    def _read(self, process: subprocess.Popen) -> None:
        for line in process.stdout:
            try:
                reply = json.loads(line)
            except ValueError:
                self.stderr_tail.append(line.rstrip())
                continue
            call = self.calls.get(reply.get("id"))
            if call is None:
                continue
            if reply.get("type") in FINAL:
                self.calls.pop(call.id, None)
            call._deliver(reply)
        process.wait()
        self._stderr_reader.join(timeout=2)  # its last line says why the child ended
        why = self._why()
        for call in list(self.calls.values()):
            self._end(call, why)

    def _read_stderr(self, process: subprocess.Popen) -> None:
        for line in process.stderr:
            if line.strip():
                self.stderr_tail.append(line.rstrip())

    def _why(self) -> str:
        code = self.process.poll() if self.process else None
        last = self.stderr_tail[-1] if self.stderr_tail else ""
        return (f"the model process ended (exit code {code})" if code is not None
                else "the model process is not answering") + (f": {last}" if last else "")

    def _end(self, call: Call, why: str) -> None:
        self.calls.pop(call.id, None)
        if not call.finished.is_set():
            call._deliver({"id": call.id, "type": "error", "error": why})

    def close(self, timeout: float = 5.0) -> None:
        """End the child: close its stdin (it cancels what runs and exits), kill it if it lingers."""
        with self._lock:
            self._closed = True
            process = self.process
        if process is None:
            return
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_once(module: str, op: str, params: dict, cancelled=lambda: False) -> Any:
    """One request to a fresh child, which is closed after; ``cancelled()`` is polled to give up early."""
    child = Child(module)
    try:
        call = child.call(op, **params)
        while not call.finished.wait(0.2):
            if cancelled():
                call.cancel()
                return None
        return call.wait()
    finally:
        child.close(timeout=1.0)
