"""Faults injected into real runs: whatever happens, nothing is lost but the steps since the last checkpoint.

Each test breaks a run the way the world does (a kill mid-checkpoint, a full
disk, a dropped terminal, Ctrl-C, a plugin that raises, two launches at once,
a poisoned checkpoint) and checks what survives. Runs that are resumed must
log the very losses of ``baseline``, the same recipe left alone.
See docs/reliability.md for the table.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from finetty.core.run import events as events_mod
from finetty.core.run import rundir

from .conftest import RECIPES, default_signals, events, finetty, only_run, own_plugin_names, wait_for
from .test_plugins import install_fake_distribution

RECIPE = str(RECIPES / "demo-lora.yaml")
SETTINGS = ["--set", "train.max_steps=40", "--set", "train.save_steps=10", "--set", "train.logging_steps=1"]
CLI = [sys.executable, "-m", "finetty.core.cli"]

pytestmark = pytest.mark.slow


def losses(run: Path) -> dict[int, float]:
    """``{step: loss}``; after a resume the later value of a step wins."""
    return {e["step"]: e["loss"] for e in events(run) if e["type"] == "step"}


def running(pid: int) -> bool:
    """True while ``pid`` is a live process (an unreaped zombie is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def has_event(run: Path, kind: str, **match) -> bool:
    return any(e["type"] == kind and all(e.get(k) == v for k, v in match.items())
               for e in events_mod.read_all(run))


def start_cli(*args: str, env: dict | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([*CLI, *args], env={**os.environ, **(env or {})}, **popen)


def new_run(runs: Path) -> Path:
    return wait_for(lambda: next((p for p in runs.glob("*") if (p / "events.jsonl").exists()), None),
                    what="the run directory")


def assert_same_losses(run: Path, expected: dict[int, float]) -> None:
    got = losses(run)
    assert set(got) == set(expected)
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, abs=1e-4), step


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, demo_model) -> Path:
    """The recipe trained without interruption: the losses every resumed run must reproduce."""
    runs = tmp_path_factory.mktemp("baseline")
    finetty("train", RECIPE, "--runs-dir", str(runs), *SETTINGS, check=True)
    return only_run(runs)


def test_kill_between_marker_and_rename_then_two_resumes_at_once(tmp_path, baseline):
    """SIGKILL mid-checkpoint-write; the lost run is listed; of two resumes one wins, the other names it."""
    runs = tmp_path / "runs"
    out = finetty("train", RECIPE, "--runs-dir", str(runs), "--detach", *SETTINGS,
                  env={"FINETTY_FAULT": "kill-before-publish@20"})
    assert out.returncode == 0, out.stderr
    run = only_run(runs)
    wait_for(lambda: has_event(run, "step", step=20) and not rundir.is_live(run), what="the worker's death")

    # the half-published checkpoint: marked, but never renamed into place, and so not a checkpoint
    staged = run / "checkpoints" / ".staging" / "checkpoint-20"
    assert (staged / rundir.COMPLETE_MARKER).is_file()
    assert [step for step, _ in rundir.complete_checkpoints(run)] == [10]
    assert not any(e["type"] in events_mod.TERMINAL for e in events(run))
    # power cut mid-write: a torn last line; the file still reads, and the next writer starts a fresh line
    with open(run / "events.jsonl", "a") as handle:
        handle.write('{"ts": 1, "type": "st')
    assert events(run)[-1]["type"] in ("step", "checkpoint")

    summary = rundir.summarize(run)
    assert summary.status == "lost"
    listed = finetty("runs", "--runs-dir", str(runs))
    text = " ".join(listed.stdout.split())
    assert listed.returncode == 0 and "lost" in text and f"finetty train --resume {run.name}" in text
    tail = [line for line in rundir.log_tail(run, 3) if line.strip()]
    assert tail and "".join(tail[-1].split()) in "".join(text.split()), (tail, text)  # (wrapping aside)

    # the dead worker's lock file is still there with its pid, and blocks nobody
    dead = rundir.lock_holder(run)
    assert dead and (run / rundir.LOCK_FILE).exists()
    assert not running(dead)
    first, second = (start_cli("train", "--resume", run.name, "--runs-dir", str(runs),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2))
    results = [p.communicate(timeout=300) + (p.returncode,) for p in (first, second)]
    codes = sorted(code for _, _, code in results)
    assert codes == [0, 2], results
    refused = next(err for _, err, code in results if code == 2)
    winner = rundir.lock_holder(run)
    assert "live worker" in refused and f"pid {winner}" in refused and winner != dead, refused

    assert_same_losses(run, losses(baseline))
    assert not any((run / "checkpoints" / ".staging").iterdir())  # the leftover checkpoint-20 was removed
    warnings = [e["message"] for e in events(run) if e["type"] == "warning"]
    assert any("checkpoint-20" in w and "incomplete" in w for w in warnings), warnings
    assert rundir.summarize(run).status == "finished"
    started = [e for e in events(run) if e["type"] == "worker_started"]
    assert [e["resume"] for e in started] == [False, True]  # the resumed worker's first event survived the tear


def test_full_disk_while_checkpointing_fails_clearly_and_keeps_the_last_checkpoint(tmp_path, baseline):
    runs = tmp_path / "runs"
    out = finetty("train", RECIPE, "--runs-dir", str(runs), *SETTINGS, env={"FINETTY_FAULT": "enospc-on-save@20"})
    assert out.returncode == 1, (out.stdout, out.stderr)
    run = only_run(runs)
    failed = [e for e in events(run) if e["type"] == "run_failed"]
    assert len(failed) == 1
    reason = failed[0]["reason"]
    assert "\n" not in reason and reason.startswith("the disk is full")
    assert str(run / "checkpoints" / ".staging" / "checkpoint-20") in reason  # where
    assert f"finetty train --resume {run.name}" in reason
    assert "disk is full" in " ".join(out.stderr.split())

    # the previous checkpoint is whole, the half-written one is gone, nothing else was touched
    assert {"checkpoints", "events.jsonl", "recipe.yaml", "worker.log"} <= {p.name for p in run.iterdir()}
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-000010"]
    kept = run / "checkpoints" / "step-000010"
    marker = (kept / rundir.COMPLETE_MARKER).read_text()
    assert sorted(p.name for p in kept.iterdir() if p.name != rundir.COMPLETE_MARKER) == \
        sorted(json.loads(marker)["files"])
    before = digest(kept)
    assert "Traceback" in (run / "worker.log").read_text()

    # and usable: resuming from it reproduces the uninterrupted run
    again = finetty("train", "--resume", run.name, "--runs-dir", str(runs))
    assert again.returncode == 0, again.stderr
    assert "step-000010" in again.stdout
    assert_same_losses(run, losses(baseline))
    if kept.exists():  # (rotation may retire it once newer checkpoints exist; until then it is unchanged)
        assert digest(kept) == before


def test_ctrl_c_in_the_foreground_checkpoints_stops_and_resumes(tmp_path, baseline):
    runs = tmp_path / "runs"
    # a terminal's Ctrl-C goes to its foreground process group: the CLI, never the detached worker
    cli = start_cli("train", RECIPE, "--runs-dir", str(runs), *SETTINGS, start_new_session=True,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=default_signals)
    run = new_run(runs)
    wait_for(lambda: has_event(run, "run_started"), what="training to start")
    os.killpg(cli.pid, signal.SIGINT)
    output, _ = cli.communicate(timeout=120)
    assert cli.returncode == 130, output
    said = [line.strip() for line in output.splitlines()
            if line.strip().startswith(("data:", "checkpoint ", "warning:"))]
    assert said and len(said) == len(set(said)), output  # after Ctrl-C, no line is printed a second time
    stopped = [e for e in events(run) if e["type"] == "stopped"]
    assert len(stopped) == 1, output
    step = stopped[0]["step"]
    assert 0 < step < 40
    assert stopped[0]["checkpoint"] == f"checkpoints/{rundir.checkpoint_name(step)}"
    assert rundir.latest_checkpoint(run).name == rundir.checkpoint_name(step)
    assert rundir.summarize(run).status == "stopped"
    assert f"finetty train --resume {run.name}" in " ".join(output.split())

    again = finetty("train", "--resume", run.name, "--runs-dir", str(runs))
    assert again.returncode == 0, again.stderr
    assert_same_losses(run, losses(baseline))


def test_hangup_of_the_terminal_leaves_the_worker_training(tmp_path, demo_model):
    """The SSH session drops: the pty closes, the kernel hangs up its foreground group; the worker trains on."""
    runs = tmp_path / "runs"
    master, slave = os.openpty()

    def take_terminal():  # after setsid (start_new_session): the pty becomes this session's terminal
        default_signals()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    cli = start_cli("train", RECIPE, "--runs-dir", str(runs), "--set", "train.max_steps=150",
                    "--set", "train.logging_steps=1", "--set", "train.save_steps=1000",
                    stdin=slave, stdout=slave, stderr=slave, start_new_session=True, preexec_fn=take_terminal)
    os.close(slave)
    run = new_run(runs)
    try:
        wait_for(lambda: has_event(run, "step"), what="the first step")
        worker = rundir.lock_holder(run)
        assert os.getsid(worker) != os.getsid(cli.pid)
        hung_up = time.time()
        os.close(master)  # the connection is gone
        assert cli.wait(timeout=60) == -signal.SIGHUP
        wait_for(lambda: rundir.summarize(run).status != "running", what="the run to end")
    finally:
        if cli.poll() is None:
            cli.kill()
        if rundir.is_live(run) and rundir.lock_holder(run):  # (a failed wait: the worker is not left training)
            os.kill(rundir.lock_holder(run), signal.SIGKILL)
    end = events(run)[-1]
    assert end["type"] == "run_finished" and end["step"] == 150, end
    assert any(e["type"] == "step" and e["ts"] > hung_up for e in events(run))


BOOM_PLUGIN = """
from finetty.core.plugin_api import Method, hookimpl

forwards = {"count": 0}


def _explode(module, args, output):
    forwards["count"] += 1
    if forwards["count"] == 4:
        raise RuntimeError("the boom hook gave up at forward 4")


def _apply(model, options, ctx):
    model.register_forward_hook(_explode)
    return model


@hookimpl
def register_methods(register):
    register(Method(name="boom", summary="full training with a hook that raises", apply=_apply,
                    load=lambda path, options, load_base: load_base(), freezes_base=False))
"""


def test_plugin_raising_inside_a_training_step_is_named(tmp_path, demo_model):
    site = tmp_path / "site"
    install_fake_distribution(site, "finetty-boom", {"boom_plugin": BOOM_PLUGIN}, {"boom": "boom_plugin"})
    env = {"PYTHONPATH": str(site), "FINETTY_LOAD_PLUGINS": own_plugin_names() + ",boom"}
    recipe = tmp_path / "boom.yaml"
    recipe.write_text("method: boom\ntrain: {max_steps: 10, logging_steps: 1, learning_rate: 1.0e-4}\n")
    out = finetty("train", str(recipe), "--runs-dir", str(tmp_path / "runs"), env=env)
    assert out.returncode == 1, (out.stdout, out.stderr)
    run = only_run(tmp_path / "runs")
    reason = [e for e in events(run) if e["type"] == "run_failed"][0]["reason"]
    assert reason == ("method plugin 'boom' (finetty-boom) raised during training: "
                      "RuntimeError: the boom hook gave up at forward 4")
    assert [e["step"] for e in events(run) if e["type"] == "step"] == [1, 2, 3]
    log = (run / "worker.log").read_text()
    assert "Traceback" in log and "boom_plugin.py" in log and "_explode" in log
    assert "Traceback" not in out.stderr and "boom" in out.stderr


def test_trust_remote_code_is_off_unless_the_recipe_says_so(tmp_path, demo_model):
    """A model folder that ships Python code: the default recipe refuses to run it."""
    model = tmp_path / "custom-model"
    shutil.copytree(demo_model, model)
    ran = tmp_path / "REMOTE-CODE-RAN"
    config = json.loads((model / "config.json").read_text())
    config.update(model_type="finetty_custom", architectures=["CustomModel"],
                  auto_map={"AutoConfig": "custom.CustomConfig", "AutoModelForCausalLM": "custom.CustomModel"})
    (model / "config.json").write_text(json.dumps(config))
    (model / "custom.py").write_text(f"open({str(ran)!r}, 'w').write('ran')\n"
                                     "from transformers import LlamaConfig, LlamaForCausalLM\n"
                                     "class CustomConfig(LlamaConfig):\n    model_type = 'finetty_custom'\n"
                                     "class CustomModel(LlamaForCausalLM):\n    config_class = CustomConfig\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {model}\ntrain: {{max_steps: 2}}\n")
    out = finetty("train", str(recipe), "--runs-dir", str(tmp_path / "runs"))
    assert out.returncode == 1, (out.stdout, out.stderr)
    run = only_run(tmp_path / "runs")
    assert "trust_remote_code: false" in (run / "recipe.yaml").read_text()
    reason = [e for e in events(run) if e["type"] == "run_failed"][0]["reason"]
    assert "trust_remote_code" in reason
    assert not ran.exists(), "the model's own code ran without trust_remote_code"


class _Touch:
    """A pickle that creates a file when unpickled by an unsafe loader."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_poisoned_checkpoint_pickles_are_never_executed(tmp_path, baseline):
    """optimizer.pt / scheduler.pt / rng_state.pth are read with weights_only=True: code in them never runs."""
    import torch

    runs = tmp_path / "runs"
    run = runs / baseline.name
    shutil.copytree(baseline, run, ignore=shutil.ignore_patterns("final", "worker.lock"))
    first = rundir.complete_checkpoints(run)[0][1]  # (rotation kept the newest two)
    for path in (run / "checkpoints").iterdir():
        if path != first:
            shutil.rmtree(path)
    kept = []
    for event in events(baseline):  # the history up to that checkpoint: a run whose worker vanished
        kept.append(event)
        if event["type"] == "checkpoint" and event["path"].endswith(first.name):
            break
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in kept))
    ran = tmp_path / "PICKLE-RAN"
    for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
        target = first / name
        assert target.exists(), name
        torch.save({"state": _Touch(ran)}, target, pickle_module=pickle)
    # whoever can write the files can write the marker too: its sizes and hashes agree, so only the
    # weights-only load stands between the pickles and the resume
    marker = json.loads((first / rundir.COMPLETE_MARKER).read_text())
    (first / rundir.COMPLETE_MARKER).write_text(json.dumps({**marker, "files": rundir.describe_files(first)}))
    out = finetty("train", "--resume", run.name, "--runs-dir", str(runs))
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert not ran.exists(), "a checkpoint pickle executed code on resume"
    reason = [e for e in events(run) if e["type"] == "run_failed"][-1]["reason"]
    assert "UnpicklingError" in reason or "weights_only" in reason.lower() or "Weights only" in reason, reason


def test_results_hold_no_pickles(baseline):
    """final/ is safetensors and text only; checkpoints keep only torch's weights_only-loadable state files."""
    for path in (baseline / "final").iterdir():
        assert path.suffix not in (".bin", ".pt", ".pth", ".pkl", ".pickle"), path
        if path.suffix != ".safetensors":  # (a safetensors header length may start with any byte)
            head = path.read_bytes()[:2]
            assert head[:1] != b"\x80" and head != b"PK", f"{path} looks like a pickle or a torch zip"
    assert (baseline / "final" / "adapter_model.safetensors").exists()
    for _, checkpoint in rundir.complete_checkpoints(baseline):
        names = {p.name for p in checkpoint.iterdir()}
        assert "adapter_model.safetensors" in names and "training_args.bin" not in names
        torch_files = {n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))}
        assert torch_files <= {"optimizer.pt", "scheduler.pt", "rng_state.pth", "scaler.pt"}, torch_files


def test_runs_shows_lost_and_failed_runs_with_their_own_words(tmp_path):
    """Log lines and reasons are shown verbatim, brackets and all (they are not markup)."""
    runs = tmp_path / "runs"
    for name, last in (("lost-run", None), ("failed-run", {"type": "run_failed",
                                                          "reason": "OSError: [Errno 5] [/x] failed [bold]"})):
        run = runs / name
        run.mkdir(parents=True)
        (run / rundir.RECIPE_FILE).write_text("model: tiny-demo\nmethod: lora\n")
        lines = [{"ts": 1.0, "type": "worker_started"}, {"ts": 2.0, "type": "run_started", "step": 0,
                                                          "total_steps": 9, "recipe": {"model": "m", "method": "lora"}},
                 {"ts": 3.0, "type": "step", "step": 4, "loss": 1.5}] + ([last] if last else [])
        (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
        (run / rundir.LOG_FILE).write_text("loading\n[rank 0] Killed [/tmp/x] at [red]step 4\n")
    out = finetty("runs", "--runs-dir", str(runs))
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    assert "lost-run" in text and "lost" in text and "[rank 0] Killed [/tmp/x] at [red]step 4" in text
    assert "finetty train --resume lost-run" in text
    assert "failed-run: OSError: [Errno 5] [/x] failed [bold]" in text


@pytest.mark.parametrize("error", [
    OSError(28, "No space left on device", "/runs/r/checkpoints/.staging/checkpoint-20/optimizer.pt"),
    RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left" })'),
    OSError(122, "Disk quota exceeded", "/runs/r/events.jsonl"),
], ids=["oserror", "safetensors", "quota"])
def test_every_way_a_library_says_disk_full_is_read_as_such(tmp_path, error):
    from finetty.core.train.worker import _failure_reason

    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError("saving the checkpoint failed") from inner
    except RuntimeError as outer:
        reason = _failure_reason(outer, tmp_path / "r")
    assert reason.startswith("the disk is full: no space left writing ")
    assert (getattr(error, "filename", None) or str(tmp_path / "r" / "checkpoints")) in reason
    assert "finetty train --resume r" in reason and "\n" not in reason
