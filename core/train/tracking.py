"""Experiment tracking: ``train.report_to`` integrations write under the run directory.

transformers' integrations decide where they write from environment
variables, read when the Trainer builds its callbacks and when training
begins. Left alone, TensorBoard would write under the Trainer's
``output_dir`` (finetty's checkpoint staging folder, removed after every
save), W&B and trackio into the current directory or the user's cache, and
MLflow into ``./mlruns``. :func:`environment` points each requested one at the
run directory for as long as the run trains, then puts the variables back
(a test trains in its own process, and the next run has another directory):

- tensorboard: ``RUN/tensorboard/`` (``TENSORBOARD_LOGGING_DIR``);
- wandb: ``RUN/wandb/`` (``WANDB_DIR``); ``WANDB_MODE=offline`` from the
  launch environment keeps it off the network, ``wandb sync`` uploads later;
- mlflow: ``RUN/mlruns/`` as a local file store, unless the launch
  environment names a server (``MLFLOW_TRACKING_URI``). MLflow 3 keeps the
  file store in maintenance mode and refuses it unless
  ``MLFLOW_ALLOW_FILE_STORE=true``, which finetty sets with the URI: its
  database store (``sqlite:``) needs SQLAlchemy and Alembic, which
  ``mlflow-skinny`` lacks, and runs schema migrations for seconds at every
  start. MLflow's usage telemetry is off (``MLFLOW_DISABLE_TELEMETRY``)
  unless the launch environment turns it on: a run sends nothing anywhere;
- trackio: ``RUN/trackio/`` (``TRACKIO_DIR``), one SQLite database per
  project (``TrainingArguments.project``, ``huggingface`` unless the recipe's
  ``train.project`` says otherwise). It stays local: transformers starts a
  Space only for ``trackio_space_id`` (or ``TRACKIO_SPACE_ID``), which finetty
  never sets.

Secrets (``WANDB_API_KEY``, ``HF_TOKEN``, ``MLFLOW_TRACKING_TOKEN``) are read by
the integrations from the worker's environment, which it inherits from the
launch; finetty never copies them into the recipe, the events or any file of
the run directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from finetty.core.recipe.machine import report_to_names

TENSORBOARD = "tensorboard"
MLFLOW = "mlruns"
TRACKIO = "trackio"


def settings(run_dir: Path, report_to) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """``(always, unless_set)`` for ``report_to``: the variables to set, and ``{KEY: variables}`` to set
    only where the launch environment has no ``KEY`` (a user's own choice wins, with all that goes with it)."""
    names = set(report_to_names(report_to))
    always: dict[str, str] = {}
    unless_set: dict[str, dict[str, str]] = {}
    if "tensorboard" in names:
        always["TENSORBOARD_LOGGING_DIR"] = str(run_dir / TENSORBOARD)
    if "wandb" in names:
        always["WANDB_DIR"] = str(run_dir)  # wandb makes its own wandb/ folder inside
        unless_set["WANDB_PROJECT"] = {"WANDB_PROJECT": "finetty"}
    if "mlflow" in names:
        unless_set["MLFLOW_TRACKING_URI"] = {"MLFLOW_TRACKING_URI": (run_dir / MLFLOW).as_uri(),
                                             "MLFLOW_ALLOW_FILE_STORE": "true"}
        unless_set["MLFLOW_DISABLE_TELEMETRY"] = {"MLFLOW_DISABLE_TELEMETRY": "true"}
    if "trackio" in names:
        always["TRACKIO_DIR"] = str(run_dir / TRACKIO)
    return always, unless_set


@contextmanager
def environment(run_dir: Path, report_to) -> Iterator[None]:
    """The requested integrations write under ``run_dir`` while the block runs; the environment is restored after."""
    always, unless_set = settings(run_dir, report_to)
    wanted = {k: v for key, group in unless_set.items() if not os.environ.get(key) for k, v in group.items()}
    wanted.update(always)
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
