"""train.report_to: integrations write under the run directory, offline; secrets reach the worker and never the run.

One real run, launched as a person would (``finetty train --detach``), logs
to TensorBoard and (where wandb is installed) to W&B in offline mode, with
secrets in its environment: tensorboard's own reader and ``wandb leet
inspect`` find the losses events.jsonl has, the worker's environment holds
the secrets, and no file of the run directory does. mlflow and trackio are
not installed for the tests (too heavy): their refusal is what is tested.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from finetty.core.errors import InputError, InputErrors
from finetty.core.plugin.registry import load_plugins
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.run import rundir
from finetty.core.train import tracking

from .conftest import RECIPES, events, finetty, losses, only_run, wait_for

SECRETS = {"WANDB_API_KEY": "wandb-secret-4f1c9e", "HF_TOKEN": "hf_secret7d2a0b", "MLFLOW_TRACKING_TOKEN":
           "mlflow-secret-90ab3c", "MY_SERVICE_SECRET": "service-secret-5e8d71", "OPENAI_API_KEY": "sk-secret-b3c2"}


def wandb_losses(run: Path) -> dict[int, float]:
    """``{global step: train/loss}`` from the run's offline W&B log, read by wandb's own ``leet inspect``."""
    [log] = (run / "wandb").glob("offline-run-*/run-*.wandb")
    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(log)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    items = [r["history"]["item"] for r in records if r.get("type") == "history"]
    return {int(i["train/global_step"]): i["train/loss"] for i in items if "train/loss" in i}


@pytest.mark.slow
def test_tracking_logs_in_the_run_directory_and_secrets_stay_out_of_it(tmp_path: Path, demo_model):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    wandb = importlib.util.find_spec("wandb") is not None
    report_to = "[tensorboard, wandb]" if wandb else "tensorboard"
    out = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs), "--detach",
                  "--set", "train.max_steps=3", "--set", "train.logging_steps=1", "--set", "train.save_steps=2",
                  "--set", f"train.report_to={report_to}",
                  env={**SECRETS, "FINETTY_STANDBY": "0", "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert out.returncode == 0, out.stderr
    run = only_run(runs)
    pid = wait_for(lambda: next((e["pid"] for e in events(run) if e["type"] == "worker_started"), None),
                   "the worker to start")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    for name, value in SECRETS.items():  # the worker was given them (read while its imports still run)
        assert f"{name}={value}".encode() in environ, name
    wait_for(lambda: not rundir.is_live(run), "the worker to end", timeout=300)
    assert [e["type"] for e in events(run)][-1] == "run_finished", events(run)[-3:]

    board = EventAccumulator(str(run / tracking.TENSORBOARD))
    board.Reload()
    assert "train/loss" in board.Tags()["scalars"], board.Tags()
    logged = {s.step: s.value for s in board.Scalars("train/loss")}
    expected = losses(run)
    assert sorted(logged) == sorted(expected) == [1, 2, 3]
    for step, loss in expected.items():
        assert logged[step] == pytest.approx(loss, rel=1e-4)
    if wandb:
        logged = wandb_losses(run)
        assert sorted(logged) == [1, 2, 3]
        for step, loss in expected.items():
            assert logged[step] == pytest.approx(loss, rel=1e-4)

    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.parent.parent == run / tracking.TENSORBOARD or p.parent == run / tracking.TENSORBOARD
               for p in files if p.name.startswith("events.out.tfevents"))
    for path in files:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name}'s value is in {path.relative_to(run)}"


@pytest.mark.parametrize("name", ["wandb", "mlflow", "trackio"])
def test_an_integration_that_is_not_installed_is_refused_with_the_pip_command(name: str):
    if importlib.util.find_spec(name) is not None:
        pytest.skip(f"{name} is installed here")
    with pytest.raises((InputError, InputErrors)) as caught:
        recipe_mod.load(None, [f"train.report_to=[tensorboard, {name}]"], load_plugins(), check_data=False)
    message = " ".join(str(caught.value).split())
    assert f"--set train.report_to: report_to {name} needs the {name} package, and it is not installed" in message
    assert f"pip install {name}" in message


def test_report_to_takes_the_integrations_finetty_points_at_the_run_directory():
    with pytest.raises(InputError) as caught:
        recipe_mod.load(None, ["train.report_to=all"], load_plugins(), check_data=False)
    assert "report_to 'all' is not an integration finetty sets up" in str(caught.value)
    assert "tensorboard, wandb, mlflow, trackio" in caught.value.fix
    recipe = recipe_mod.load(None, ["train.report_to=none"], load_plugins(), check_data=False)
    assert recipe.train["report_to"] == "none"


def test_each_integration_is_pointed_at_the_run_directory_and_the_environment_put_back(tmp_path, monkeypatch):
    run = tmp_path / "run"
    monkeypatch.setenv("TENSORBOARD_LOGGING_DIR", "/elsewhere")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")  # a server of the user's own wins
    monkeypatch.delenv("WANDB_DIR", raising=False)
    monkeypatch.delenv("TRACKIO_DIR", raising=False)
    with tracking.environment(run, ["tensorboard", "wandb", "mlflow", "trackio"]):
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(run / "tensorboard")
        assert os.environ["WANDB_DIR"] == str(run)
        assert os.environ["TRACKIO_DIR"] == str(run / "trackio")
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == "/elsewhere"
    assert "WANDB_DIR" not in os.environ and "TRACKIO_DIR" not in os.environ
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with tracking.environment(run, "mlflow"):
        assert os.environ["MLFLOW_TRACKING_URI"] == (run / "mlruns").as_uri()
        assert "TENSORBOARD_LOGGING_DIR" in os.environ and os.environ["TENSORBOARD_LOGGING_DIR"] == "/elsewhere"
    assert "MLFLOW_TRACKING_URI" not in os.environ
