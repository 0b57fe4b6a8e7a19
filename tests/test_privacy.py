"""Private by default: owner-only homes, runs and locks; pids checked before a signal; no link followed.

A run directory holds recipes, log lines quoting data, optimizer state and the
lock that says who trains. Another local user must be able neither to read it
nor to take its lock; a pid written in a lock is trusted only with its start
time; a symbolic link planted in a run directory is named, never followed.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from finetty.core import paths
from finetty.core.errors import InputError, RunBusyError
from finetty.core.recipe import recipe
from finetty.core.run import events as events_mod
from finetty.core.run import queue, rundir

from .conftest import RECIPES, finetty, only_run

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _fake_run(runs: Path, name: str = "some-run") -> Path:
    """A lost run on disk (no worker): recipe, a few events, a log."""
    run = runs / name
    run.mkdir(parents=True)
    (run / rundir.RECIPE_FILE).write_text(recipe.Recipe().to_yaml())
    lines = [{"ts": 1.0, "type": "worker_started"},
             {"ts": 2.0, "type": "run_started", "step": 0, "total_steps": 9,
              "recipe": {"model": "tiny-demo", "method": "lora"}},
             {"ts": 3.0, "type": "step", "step": 4, "loss": 1.5}]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in lines))
    return run


@pytest.mark.slow
def test_a_run_and_everything_in_it_is_owner_only(tmp_path, demo_model):
    runs = tmp_path / "deeper" / "runs"
    finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs), "--set", "train.max_steps=2",
            "--set", "train.save_steps=1", check=True)
    run = only_run(runs)
    assert _mode(tmp_path / "deeper") == 0o700 and _mode(runs) == 0o700
    found = list(run.rglob("*")) + [run]
    assert any(p.name == "adapter_model.safetensors" for p in found) and any(p.name == "optimizer.pt" for p in found)
    exposed = [f"{p.relative_to(tmp_path)} {_mode(p):o}" for p in found
               if _mode(p) != (0o700 if p.is_dir() else 0o600)]
    assert not exposed, exposed
    assert not (run / ".disk-reserve").exists()  # the worker gave its reserve back


def test_a_home_others_can_enter_is_warned_about_at_start(tmp_path):
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    out = finetty("runs", env={"FINETTY_HOME": str(home)})
    assert out.returncode == 0, out.stderr
    warning = " ".join(out.stderr.split())
    assert f"{home} is group- and world-accessible (mode 0755)" in warning and f"chmod 700 {home}" in warning
    home.chmod(0o700)
    assert "accessible" not in finetty("runs", env={"FINETTY_HOME": str(home)}).stderr


def test_run_directories_are_created_owner_only(tmp_path):
    run = rundir.create(tmp_path / "a" / "runs", "lora", "model: tiny-demo\n")
    assert _mode(tmp_path / "a") == _mode(tmp_path / "a" / "runs") == _mode(run) == 0o700
    assert _mode(run / rundir.RECIPE_FILE) == 0o600
    fd = rundir.acquire_lock(run)
    try:
        assert _mode(run / rundir.LOCK_FILE) == 0o600
    finally:
        os.close(fd)


@pytest.fixture
def open_folder():
    """A folder every user may enter (pytest's own tmp_path is private, which would hide what is tested)."""
    folder = Path(tempfile.mkdtemp(prefix="finetty-open-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@as_root
def test_another_user_can_neither_read_a_run_nor_take_its_lock(open_folder):
    run = rundir.create(open_folder / "runs", "lora", "model: tiny-demo\n")
    os.close(rundir.acquire_lock(run))
    probe = ("import fcntl, os, sys\nos.setgid(65534); os.setuid(65534)\n"
             "for path in sys.argv[1:]:\n"
             "    try:\n        fd = os.open(path, os.O_RDONLY)\n"
             "    except PermissionError:\n        print('refused', path); continue\n"
             "    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); print('LOCKED', path)\n")
    out = subprocess.run([sys.executable, "-c", probe, str(run / rundir.LOCK_FILE), str(run / rundir.RECIPE_FILE)],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split("\n")[:2] == [f"refused {run / rundir.LOCK_FILE}", f"refused {run / rundir.RECIPE_FILE}"], \
        (out.stdout, out.stderr)


@as_root
def test_a_lock_file_someone_else_made_is_refused_by_name(tmp_path):
    run = rundir.create(tmp_path / "runs", "lora", "model: tiny-demo\n")
    lock = run / rundir.LOCK_FILE
    lock.write_text("")
    os.chown(lock, NOBODY, NOBODY)
    with pytest.raises(InputError) as refused:
        rundir.acquire_lock(run)
    assert str(lock) in str(refused.value) and f"uid {NOBODY}" in str(refused.value)


def test_a_lock_naming_a_reused_pid_is_never_signalled(tmp_path):
    """The lock is held and names a live process, but one that started after the worker did: no signal."""
    runs = tmp_path / "runs"
    run = _fake_run(runs)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    fd = rundir.acquire_lock(run)  # plays the live worker's lock
    try:
        started = rundir.start_time(bystander.pid)
        os.pwrite(fd, f"{bystander.pid} {started - 3600:.3f}\n".encode(), 0)  # the worker ran an hour earlier
        out = finetty("stop", run.name, "--runs-dir", str(runs))
        assert out.returncode == 2, (out.stdout, out.stderr)
        said = " ".join(out.stderr.split())
        assert f"pid {bystander.pid}" in said and "another process now" in said and "nothing was signalled" in said
        assert bystander.poll() is None  # not signalled

        rundir.record_holder(fd, bystander.pid)  # now the lock names it with its true start time
        assert rundir.live_holder(run) == (bystander.pid, None)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{bystander.pid}\n".encode(), 0)  # no start time: cannot be checked, so not trusted
        assert rundir.live_holder(run)[0] is None
    finally:
        os.close(fd)
        bystander.kill()
        bystander.wait()


def test_a_held_queue_lock_times_out_naming_its_holder(tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    paths.make_private_dir(runs)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\nfrom finetty.core.run import rundir\n"
         f"fd = os.open({str(runs / queue.QUEUE_LOCK)!r}, os.O_RDWR | os.O_CREAT, 0o600)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); rundir.record_holder(fd); print('held', flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(queue, "LOCK_TIMEOUT", 0.5)
        began = time.monotonic()
        with pytest.raises(RunBusyError) as busy:
            queue.add(runs, recipe.Recipe())
        assert time.monotonic() - began < 10
        assert f"pid {holder.pid}" in str(busy.value) and "nothing was changed" in str(busy.value)
        assert queue.read(runs).entries == []
    finally:
        holder.kill()
        holder.wait()
    assert queue.add(runs, recipe.Recipe()).id == queue.read(runs).entries[0].id  # free again: it goes through
    assert _mode(runs / queue.QUEUE_FILE) == _mode(runs / queue.QUEUE_LOCK) == 0o600


def test_a_linked_worker_log_is_neither_shown_nor_written(tmp_path):
    runs = tmp_path / "runs"
    run = _fake_run(runs)
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-LINE-ONE\nSECRET-LINE-TWO\n")
    (run / rundir.LOG_FILE).symlink_to(secret)

    listed = finetty("runs", "--runs-dir", str(runs))
    assert listed.returncode == 0, listed.stderr
    assert "SECRET" not in listed.stdout and "symbolic link" in listed.stdout

    resumed = finetty("train", "--resume", run.name, "--runs-dir", str(runs))
    assert resumed.returncode == 2, (resumed.stdout, resumed.stderr)
    said = " ".join(resumed.stderr.split())
    assert str(run / rundir.LOG_FILE) in said and "symbolic link" in said
    assert secret.read_text() == "SECRET-LINE-ONE\nSECRET-LINE-TWO\n"
    assert not rundir.is_live(run)


def test_linked_events_recipe_and_lock_are_refused_by_name(tmp_path):
    run = _fake_run(tmp_path / "runs")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_text("")
    (run / "events.jsonl").unlink()
    (run / "events.jsonl").symlink_to(elsewhere)
    with pytest.raises(InputError) as refused:
        events_mod.EventWriter(run)
    assert str(run / "events.jsonl") in str(refused.value)
    (run / rundir.LOCK_FILE).symlink_to(elsewhere)
    with pytest.raises(InputError) as refused:
        rundir.acquire_lock(run)
    assert str(run / rundir.LOCK_FILE) in str(refused.value)
    recipe_file = run / rundir.RECIPE_FILE
    (tmp_path / "recipe.yaml").write_text(recipe_file.read_text())
    recipe_file.unlink()
    recipe_file.symlink_to(tmp_path / "recipe.yaml")
    with pytest.raises(InputError) as refused:
        rundir.find(run.name, run.parent)
    assert str(recipe_file) in str(refused.value)
    assert elsewhere.read_text() == ""


def test_a_linked_history_or_index_is_never_read(tmp_path):
    from finetty.core.run import summary as summary_mod

    runs = tmp_path / "runs"
    run = _fake_run(runs)
    other = tmp_path / "other-events.jsonl"
    (run / "events.jsonl").rename(other)  # a real history, elsewhere: its steps must not be shown as this run's
    (run / "events.jsonl").symlink_to(other)
    reader = events_mod.EventReader(run)
    assert reader.poll() == [] and reader.linked and reader.at_end
    index = run / summary_mod.INDEX_FILE
    index.unlink(missing_ok=True)
    (tmp_path / "index.json").write_text("{}")
    index.symlink_to(tmp_path / "index.json")
    assert summary_mod.read_index(run) is None

    listed = finetty("runs", "--runs-dir", str(runs))
    assert listed.returncode == 0, listed.stderr
    assert "symbolic link" in " ".join(listed.stdout.split()), listed.stdout
