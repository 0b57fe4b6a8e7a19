"""Notifications that need no app: the worker and the queue runner post to Apprise URLs by themselves.

A stand-in endpoint on 127.0.0.1 (a tiny HTTP server recording each POST)
takes Apprise's ``json://`` notifications. The runs are started as a person
would, with no app: ``finetty train`` in a subprocess, ``finetty queue run``'s
loop starting a detached worker. A failure is made cheaply: the worker
is started where the method's plugin does not load, so it fails before it
trains, with a reason. Each test has a FINETTY_HOME of its own (config.yaml
is read from there) sharing the session's demo model.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from finetty.core.cli.commands import main as cli
from finetty.core.run import notify, queue, rundir

from .conftest import RECIPES, events, finetty, own_plugin_names, write_recipe

SECRET = "pa55-Secret-9z"
"""the password in every URL: it must reach the endpoint and never the run directory"""
OVERRIDES = ["train.max_steps=2", "train.save_steps=100", "train.logging_steps=1",
             "train.per_device_train_batch_size=2"]
FAST = [arg for override in OVERRIDES for arg in ("--set", override)]


class StandIn:
    """An HTTP endpoint on loopback that answers 200 and keeps every POST (path, auth user/password, JSON body)."""

    def __init__(self):
        self.posts: list[dict] = []
        received = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                auth = self.headers.get("Authorization", "")
                user = base64.b64decode(auth.split()[-1]).decode() if auth.startswith("Basic ") else ""
                received.append({"path": self.path, "auth": user, "json": json.loads(body or b"{}")})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"json://user:{SECRET}@127.0.0.1:{self.port}/{path}"

    def to(self, path: str) -> list[dict]:
        return [post for post in self.posts if post["path"] == f"/{path}"]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint():
    stand_in = StandIn()
    yield stand_in
    stand_in.close()


@pytest.fixture
def dead_url() -> str:
    """A URL whose port nothing listens on (bound for a free number, then closed)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"json://user:{SECRET}@127.0.0.1:{port}/dead"


@pytest.fixture
def home(tmp_path, monkeypatch, demo_model) -> Path:
    """A FINETTY_HOME of the test's own (for its config.yaml), with the session's demo model in it."""
    folder = tmp_path / "home"
    folder.mkdir(mode=0o700)
    (folder / "models").symlink_to(demo_model.parent)
    monkeypatch.setenv("FINETTY_HOME", str(folder))
    monkeypatch.setenv("FINETTY_STANDBY", "0")
    return folder


def configure(home: Path, *urls: str) -> None:
    (home / "config.yaml").write_text("notify:\n" + "".join(f"  - '{url}'\n" for url in urls))


def no_secret_in(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def failing_worker_env(monkeypatch) -> None:
    """Workers started from now on load no lora plugin, so a LoRA run fails at once, with a reason."""
    monkeypatch.setenv("FINETTY_LOAD_PLUGINS", ",".join(n for n in own_plugin_names().split(",") if n != "lora"))


def new_run(runs: Path, overrides: list[str]) -> Path:
    """A validated demo LoRA run directory, made as ``finetty train`` makes it (its worker not started)."""
    from finetty.core.plugin.registry import load_plugins
    from finetty.core.recipe import recipe as recipe_mod

    recipe = recipe_mod.load(RECIPES / "demo-lora.yaml", overrides, load_plugins())
    return rundir.create(runs, recipe.method, recipe.to_yaml())


def test_a_bad_url_is_refused_before_a_run_exists_and_its_secret_is_not_shown(tmp_path, home, capsys):
    recipe = write_recipe(tmp_path, f"model: tiny-demo\nnotify: ['discrd://{SECRET}@hooks', 'ntfy://ok-topic']\n")
    runs = tmp_path / "runs"
    assert cli(["train", str(recipe), "--runs-dir", str(runs)]) == 2
    said = capsys.readouterr().err
    assert f"{recipe}, line 2, key notify, item 1: discrd://… names no service Apprise knows" in " ".join(said.split())
    assert "discord://" in said and SECRET not in said
    assert not runs.exists()
    configure(home, f"discord://{SECRET}")  # a known service missing its token, in config.yaml
    assert cli(["train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs)]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert f"{home / 'config.yaml'}, key notify, item 1: discord://… is not a URL Apprise can send to" in said
    assert SECRET not in said and not runs.exists()


@pytest.mark.slow
def test_a_finished_run_notifies_with_no_app_and_a_dead_endpoint_leaves_it_finished(tmp_path, home, endpoint,
                                                                                    dead_url):
    configure(home, endpoint.url("config"))
    recipe = write_recipe(tmp_path, (RECIPES / "demo-lora.yaml").read_text()
                          + f"notify: ['{endpoint.url('recipe')}', '{dead_url}']\n")
    runs = tmp_path / "runs"
    result = finetty("train", str(recipe), "--runs-dir", str(runs), *FAST, timeout=300)
    assert result.returncode == 0, result.stderr
    run = next(runs.iterdir())
    ends = [e for e in events(run) if e["type"] in ("run_finished", "run_failed")]
    assert [e["type"] for e in ends] == ["run_finished"]
    for path in ("config", "recipe"):  # the config's URL and the recipe's, each once
        [post] = endpoint.to(path)
        assert post["auth"] == f"user:{SECRET}"  # the real URL reached the worker
        assert post["json"]["title"] == f"finetty: {run.name} finished"
        assert "finished at step 2, train loss" in post["json"]["message"]
        assert "method/objective: lora/sft" in post["json"]["message"]
    warnings = [e["message"] for e in events(run) if e["type"] == "warning" and "not delivered" in e["message"]]
    assert len(warnings) == 1 and "127.0.0.1" in warnings[0] and "/dead" in warnings[0]
    assert "not delivered" in (run / rundir.LOG_FILE).read_text()
    assert rundir.summarize(run).status == "finished"
    copy = (run / rundir.RECIPE_FILE).read_text()
    assert "user:****@127.0.0.1" in copy  # the recipe copy shows which URLs, masked
    no_secret_in(run)


def test_a_failed_run_and_the_queue_runner_notify_with_no_app(tmp_path, home, endpoint, monkeypatch):
    """A queued entry that cannot start, and one whose worker fails at once: the worker tells its failure, the runner
    the entry that never started and, once the failed run has ended, the end of the queue."""
    from finetty.core.plugin.registry import load_plugins
    from finetty.core.recipe import recipe as recipe_mod

    configure(home, endpoint.url("config"))
    runs = tmp_path / "runs"
    data = tmp_path / "data.jsonl"
    data.write_text('{"instruction": "hi", "output": "hello"}\n')
    queue.add(runs, recipe_mod.load(None, [f"dataset={data}", f"notify=['{endpoint.url('gone')}']"], load_plugins()))
    queue.add(runs, recipe_mod.load(RECIPES / "demo-lora.yaml", OVERRIDES, load_plugins()))
    data.unlink()  # the first entry no longer validates when its turn comes
    failing_worker_env(monkeypatch)  # and the second one's worker fails at once
    said: list[str] = []
    assert queue.run_forever(runs, poll=0.1, say=said.append) == 1
    [run] = [runs / name for name in queue.read(runs).started]
    assert not rundir.is_live(run)  # the runner stayed until the last run ended
    dropped = [p for p in endpoint.to("config") if "did not start" in p["json"]["title"]]
    assert len(dropped) == 1 and "data.jsonl" in dropped[0]["json"]["message"]
    assert [p["json"]["title"] for p in endpoint.to("gone")] == [dropped[0]["json"]["title"]]  # its recipe's URL
    [end] = [p for p in endpoint.to("config") if "queue finished" in p["json"]["title"]]
    assert end["json"]["title"] == "finetty: queue finished, 1 of 1 run(s) did not finish"
    assert f"{run.name}: failed (" in end["json"]["message"]
    [failed] = [e for e in events(run) if e["type"] == "run_failed"]  # the worker's own, with its reason
    [told] = [p["json"] for p in endpoint.to("config") if p["json"]["title"] == f"finetty: {run.name} failed"]
    assert f"failed: {failed['reason']}" in told["message"] and "'lora'" in failed["reason"]
    assert told["type"] == "failure" and "method/objective: lora/sft" in told["message"]
    assert not any("not delivered" in line for line in said), said


def test_finetty_notify_test_reports_each_url(home, endpoint, dead_url, capsys):
    configure(home, endpoint.url("config"), dead_url)
    assert cli(["notify", "test"]) == 1
    out = " ".join(capsys.readouterr().out.split())
    assert f"delivered json://user:****@127.0.0.1:{endpoint.port}/config" in out
    assert "failed json://user:****@127.0.0.1:" in out and "1 of 2 delivered" in out
    assert SECRET not in out
    [post] = endpoint.to("config")
    assert post["json"]["title"] == "finetty: test notification"


def test_untrusted_text_leaves_without_control_characters(endpoint):
    [delivery] = notify.deliver([endpoint.url("clean")], "run \x1b]0;owned\x07x", "reason: \x1b[2Jboom\x00!")
    assert delivery.ok
    [post] = endpoint.to("clean")
    assert "\x1b" not in post["json"]["title"] + post["json"]["message"]
    assert "\x00" not in post["json"]["message"] and "boom" in post["json"]["message"]


def test_the_watermark_and_out_of_memory_are_told_and_a_step_is_not(tmp_path, home, endpoint):
    from finetty.core.run.events import EventWriter

    configure(home, endpoint.url("config"))
    run = new_run(tmp_path / "runs", OVERRIDES)
    events_out = notify.watch(EventWriter(run), run)
    events_out.emit("step", step=3, epoch=0.1, loss=2.5, learning_rate=1e-3, grad_norm=1.0, tokens=10,
                    tokens_per_second=5.0, elapsed=1.0)
    events_out.emit("watermark", gpu=0, fraction=0.93, watermark=0.9, state="crossed", policy="checkpoint", step=4,
                    used=93, total=100)
    events_out.emit("watermark", gpu=0, fraction=0.5, watermark=0.9, state="recovered", policy="checkpoint", step=5,
                    used=50, total=100)
    events_out.emit("shrink", step=4, reason="CUDA out of memory at step 5", micro_batch=4,
                    gradient_accumulation_steps=2, previous_micro_batch=8, previous_gradient_accumulation_steps=1,
                    checkpoint="checkpoints/step-000004")
    events_out.close()
    titles = [post["json"]["title"] for post in endpoint.to("config")]
    assert titles == [f"finetty: {run.name} crossed the memory watermark", f"finetty: {run.name} ran out of memory"]
    watermark, shrink = (post["json"]["message"] for post in endpoint.to("config"))
    assert "GPU 0 at 93% of its memory crossed the 90% watermark at step 4; policy: checkpoint" in watermark
    assert "CUDA out of memory at step 5: going on from checkpoints/step-000004 with micro-batch 8 -> 4" in shrink


def test_a_silent_endpoint_cannot_hold_up_the_end_of_a_run(tmp_path, home, monkeypatch):
    """An endpoint that takes the connection and never answers: the worker's close waits CLOSE_WAIT, not the
    read timeout, and says what it gave up."""
    import time

    from finetty.core.run.events import EventWriter

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # connections complete in the backlog; nothing ever reads or answers them
    try:
        configure(home, f"json://127.0.0.1:{silent.getsockname()[1]}/silent")
        monkeypatch.setattr(notify, "CLOSE_WAIT", 0.5)
        run = new_run(tmp_path / "runs", OVERRIDES)
        events_out = notify.watch(EventWriter(run), run)
        events_out.emit("run_failed", reason="boom")
        began = time.monotonic()
        events_out.close()
        assert time.monotonic() - began < notify.READ_TIMEOUT
    finally:
        silent.close()
    assert any("given up" in e["message"] for e in events(run) if e["type"] == "warning")
