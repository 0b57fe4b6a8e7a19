"""The worker's entry point as the run layer knows it: by module name.

The run layer starts workers (as processes, ``python -m WORKER_MODULE``) and the
standby becomes one in-process; neither may import the training engine, which
sits above the run layer and imports it (see docs/architecture.md). So the
worker is named here once, and imported by name when a process is about to
become a worker.
"""

from __future__ import annotations

import importlib

#: ``python -m WORKER_MODULE RUN_DIR [--resume] [--lock-fd N]`` runs one worker.
WORKER_MODULE = "finetty.core.train.worker"
#: ``python -m SUPERVISOR_MODULE RUN_DIR ...`` runs a run of several processes.
SUPERVISOR_MODULE = "finetty.core.train.distributed"


def preload_worker() -> None:
    """Import the worker and everything it imports at module level (the standby's warm-up)."""
    importlib.import_module(WORKER_MODULE)


def worker_main(argv: list[str]) -> int:
    """Become the worker for ``argv`` in this process."""
    return importlib.import_module(WORKER_MODULE).main(argv)
