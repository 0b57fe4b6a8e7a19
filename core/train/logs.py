"""What a worker's ``worker.log`` holds: finetty's own lines, each warning once, and errors.

The libraries a run uses write for a developer at a terminal: tqdm bars
(``Loading weights``, ``Writing model shards``) drawn with ``\\r`` that in a
log file become one unreadable line per update, and the same ``FutureWarning``
or ``UserWarning`` at every step or load. The monitor's Log tab and the lines
``finetty runs`` shows under a lost run are that file's tail, so the noise
pushes out the line that says what went wrong.

:func:`quiet_libraries` is called once by the worker before it imports a
model: progress bars off (``HF_HUB_DISABLE_PROGRESS_BARS`` and each library's
switch, for libraries already imported by a standby worker as for those
imported later), the libraries' loggers at WARNING with each message passed
once, and Python warnings shown once per message. Errors and tracebacks are
untouched. ``FINETTY_LIBRARY_LOGS=1`` in the environment of the launch keeps
the libraries' own output, for debugging them.
"""

from __future__ import annotations

import logging
import os
import warnings

ENV = "FINETTY_LIBRARY_LOGS"
#: Loggers of the libraries a run uses; each has its own handler or propagates to the root's.
LIBRARY_LOGGERS = ("transformers", "datasets", "huggingface_hub", "accelerate", "peft", "trl", "torch")


def kept() -> bool:
    """True when ``FINETTY_LIBRARY_LOGS`` asks for the libraries' own output."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "true", "yes", "on")


class OncePerMessage(logging.Filter):
    """Lets each distinct message (logger, level, text) through once: a warning repeated at every step is one line."""

    def __init__(self):
        super().__init__()
        self.seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True  # every error is kept: each may be the one that explains the end
        key = (record.name, record.levelno, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def quiet_libraries() -> bool:
    """Set the libraries' logging for a worker (see the module docstring); False when :func:`kept` says not to."""
    if kept():
        return False
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read at import by huggingface_hub, transformers, datasets
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "warning")
    os.environ.setdefault("DATASETS_VERBOSITY", "warning")
    warnings.simplefilter("once")  # each warning message once, wherever it is raised from
    _disable_bars()
    once = OncePerMessage()
    handlers = list(logging.getLogger().handlers)
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        if logger.level == logging.NOTSET or logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
        if logger.handlers:
            # a library with a handler of its own prints there; passing the record on to the root as well would
            # print it twice (transformers propagates when CI=true is in the environment)
            logger.propagate = False
        handlers += logger.handlers
    if not logging.getLogger().handlers:
        handler = logging.StreamHandler()  # what logging's last resort would print, with the filter on it
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
        handlers.append(handler)
    for handler in handlers:
        handler.addFilter(once)
    return True


def _disable_bars() -> None:
    """Each library's own progress-bar switch (the environment variable alone misses one already imported)."""
    try:
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    except ImportError:
        pass
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()
        transformers_logging.set_verbosity_warning()  # (and its handler exists now, for the filter)
    except ImportError:
        pass
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_warning()
    except ImportError:
        pass
