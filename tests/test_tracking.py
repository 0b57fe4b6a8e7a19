"""train.report_to: integrations write under the run directory, offline; secrets reach the worker and never the run.

One real run, launched as a person would (``finetty train --detach``), logs
to TensorBoard, W&B (offline), MLflow and trackio (each where installed: the
``test`` extra installs them all), with secrets in its environment and every
HTTP(S) client of the worker pointed at a proxy stand-in on 127.0.0.1. Each
integration's own reader finds the losses events.jsonl has (tensorboard's
``EventAccumulator``, ``wandb leet inspect``, ``MlflowClient`` over the file
store, ``trackio get metric``), the worker's environment holds the secrets,
no file of the run directory does, and the proxy was never asked for
anything (MLflow's telemetry is off, trackio started no Space, W&B stayed
offline). The refusal of an integration that is not installed is tested
where one is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from finetty.core.errors import InputError, InputErrors
from finetty.core.plugin.registry import load_plugins
from finetty.core.recipe import machine
from finetty.core.recipe import recipe as recipe_mod
from finetty.core.run import rundir
from finetty.core.train import tracking

from .conftest import RECIPES, REPO, events, losses, only_run, wait_for

SECRETS = {"WANDB_API_KEY": "wandb-secret-4f1c9e", "HF_TOKEN": "hf_secret7d2a0b", "MLFLOW_TRACKING_TOKEN":
           "mlflow-secret-90ab3c", "MY_SERVICE_SECRET": "service-secret-5e8d71", "OPENAI_API_KEY": "sk-secret-b3c2"}
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


def wandb_losses(run: Path) -> dict[int, float]:
    """``{global step: train/loss}`` from the run's offline W&B log, read by wandb's own ``leet inspect``."""
    [log] = (run / "wandb").glob("offline-run-*/run-*.wandb")
    out = subprocess.run([str(Path(sys.executable).parent / "wandb"), "leet", "inspect", "--json", str(log)],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    items = [r["history"]["item"] for r in records if r.get("type") == "history"]
    return {int(i["train/global_step"]): i["train/loss"] for i in items if "train/loss" in i}


def mlflow_losses(run: Path, monkeypatch) -> dict[int, float]:
    """``{step: loss}`` of the run's one MLflow run, read from its file store by ``MlflowClient``.

    transformers' ``MLflowCallback`` logs the Trainer's keys as they are (``loss``) at the global step."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # what the worker had: MLflow 3 asks for it
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / tracking.MLFLOW).as_uri())
    [found] = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert found.info.run_name == run.name and found.info.status == "FINISHED", found.info
    return {m.step: m.value for m in client.get_metric_history(found.info.run_id, "loss")}


def trackio_losses(run: Path) -> dict[int, float]:
    """``{global step: train/loss}`` from the run's trackio database, read by ``trackio get snapshot``.

    trackio numbers its own steps from 0; transformers' ``TrackioCallback`` logs ``train/global_step``
    beside each loss, so the two pair up by trackio's step. The project is transformers' default. One
    call reads every metric of every step (``--around 0`` is taken for no ``--around``: 1 and a window)."""
    out = subprocess.run([str(Path(sys.executable).parent / "trackio"), "get", "snapshot", "--project", "huggingface",
                          "--run", run.name, "--around", "1", "--window", "1000000", "--json"],
                         capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "TRACKIO_DIR": str(run / tracking.TRACKIO)}).stdout
    metrics = json.loads(out)["metrics"]
    steps = {v["step"]: int(v["value"]) for v in metrics["train/global_step"]}
    return {steps[v["step"]]: v["value"] for v in metrics["train/loss"]}


class ProxyStandin:
    """An HTTP(S) proxy on 127.0.0.1 that forwards nothing and records what it was asked for (``requests``)."""

    def __init__(self):
        self.requests: list[str] = []
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def _refuse(self):
                standin.requests.append(self.requestline)
                self.send_error(502, "this stand-in reaches nothing")

            do_CONNECT = do_GET = do_POST = do_PUT = do_HEAD = _refuse

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.slow
def test_tracking_logs_in_the_run_directory_and_secrets_stay_out_of_it(tmp_path: Path, demo_model, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = tmp_path / "runs"
    report_to = [name for name, (modules, _) in machine.TRACKERS.items() if any(map(machine.installed, modules))]
    assert "tensorboard" in report_to  # the test extra installs it
    # the launch environment of a person's shell: not a test's (MLflow keeps its telemetry quiet under pytest)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_CURRENT_TEST", "NO_PROXY", "no_proxy")}
    with ProxyStandin() as proxy:
        env.update({**SECRETS, **dict.fromkeys(PROXY_VARIABLES, proxy.url), "FINETTY_STANDBY": "0",
                    "WANDB_MODE": "offline", "WANDB_SILENT": "true"})
        out = subprocess.run([sys.executable, "-m", "finetty.core.cli", "train", str(RECIPES / "demo-lora.yaml"),
                              "--runs-dir", str(runs), "--detach", "--set", "train.max_steps=3",
                              "--set", "train.logging_steps=1", "--set", "train.save_steps=2",
                              "--set", f"train.report_to=[{', '.join(report_to)}]"],
                             capture_output=True, text=True, timeout=600, env=env, cwd=REPO)
        assert out.returncode == 0, out.stderr
        run = only_run(runs)
        pid = wait_for(lambda: next((e["pid"] for e in events(run) if e["type"] == "worker_started"), None),
                       "the worker to start")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        for name, value in SECRETS.items():  # the worker was given them (read while its imports still run)
            assert f"{name}={value}".encode() in environ, name
        wait_for(lambda: not rundir.is_live(run), "the worker to end", timeout=300)
    assert [e["type"] for e in events(run)][-1] == "run_finished", events(run)[-3:]
    assert proxy.requests == [], "the run reached for the network"

    board = EventAccumulator(str(run / tracking.TENSORBOARD))
    board.Reload()
    assert "train/loss" in board.Tags()["scalars"], board.Tags()
    logged = {"tensorboard": {s.step: s.value for s in board.Scalars("train/loss")}}
    if "wandb" in report_to:
        logged["wandb"] = wandb_losses(run)
    if "mlflow" in report_to:
        logged["mlflow"] = mlflow_losses(run, monkeypatch)
    if "trackio" in report_to:
        logged["trackio"] = trackio_losses(run)
    expected = losses(run)
    assert sorted(expected) == [1, 2, 3]
    for tracker, found in logged.items():
        assert sorted(found) == [1, 2, 3], (tracker, found)
        for step, loss in expected.items():
            assert found[step] == pytest.approx(loss, rel=1e-4), (tracker, step)

    files = [p for p in run.rglob("*") if p.is_file()]
    assert any(p.parent.parent == run / tracking.TENSORBOARD or p.parent == run / tracking.TENSORBOARD
               for p in files if p.name.startswith("events.out.tfevents"))
    for tracker, folder in (("mlflow", tracking.MLFLOW), ("trackio", tracking.TRACKIO)):
        assert tracker not in report_to or any(p.is_relative_to(run / folder) for p in files), tracker
    for path in files:
        data = path.read_bytes()
        for name, value in SECRETS.items():
            assert value.encode() not in data, f"{name}'s value is in {path.relative_to(run)}"


@pytest.mark.parametrize("name", ["wandb", "mlflow", "trackio"])
def test_an_integration_that_is_not_installed_is_refused_with_the_pip_command(name: str, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # not importable, as where it is not installed (the test extra has it)
    assert not machine.installed(name)
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
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")  # and so does a user who turned telemetry on
    for name in ("WANDB_DIR", "TRACKIO_DIR", "MLFLOW_ALLOW_FILE_STORE"):
        monkeypatch.delenv(name, raising=False)
    with tracking.environment(run, ["tensorboard", "wandb", "mlflow", "trackio"]):
        assert os.environ["TENSORBOARD_LOGGING_DIR"] == str(run / "tensorboard")
        assert os.environ["WANDB_DIR"] == str(run)
        assert os.environ["TRACKIO_DIR"] == str(run / "trackio")
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
        assert "MLFLOW_ALLOW_FILE_STORE" not in os.environ  # a server is no file store
        assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"
    assert os.environ["TENSORBOARD_LOGGING_DIR"] == "/elsewhere"
    assert "WANDB_DIR" not in os.environ and "TRACKIO_DIR" not in os.environ
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_DISABLE_TELEMETRY")
    with tracking.environment(run, "mlflow"):
        assert os.environ["MLFLOW_TRACKING_URI"] == (run / "mlruns").as_uri()
        assert os.environ["MLFLOW_ALLOW_FILE_STORE"] == "true"  # MLflow 3 refuses a file store without it
        assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
        assert "TENSORBOARD_LOGGING_DIR" in os.environ and os.environ["TENSORBOARD_LOGGING_DIR"] == "/elsewhere"
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "MLFLOW_DISABLE_TELEMETRY"):
        assert name not in os.environ, name
