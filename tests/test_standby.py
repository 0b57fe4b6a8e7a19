"""The standby worker: a launch is taken by a process that has done its imports, and trains as a cold one would."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from finetty.core.run import rundir
from finetty.core.run import standby

from .conftest import RECIPES, alive, events, finetty, losses, wait_for

STEPS = 8



def train(runs, *extra: str, env: dict | None = None):
    before = set(runs.iterdir()) if runs.exists() else set()
    finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs), "--set", f"train.max_steps={STEPS}",
            "--set", "train.logging_steps=1", *extra, env=env, check=True)
    (run_dir,) = set(runs.iterdir()) - before
    return run_dir


def worker_pid(run_dir) -> int:
    (started,) = [e for e in events(run_dir) if e["type"] == "worker_started"]
    return started["pid"]


@pytest.mark.slow
def test_a_second_train_is_taken_by_the_standby_and_learns_exactly_what_a_cold_worker_did(
        standby_on, tmp_path, demo_model):
    cold = train(tmp_path / "cold")  # no standby yet: a fresh worker, and a standby started for the next launch
    waiting = wait_for(lambda: standby.ready() and standby.pid(), "the standby to finish its imports")
    assert "from the standby" not in (cold / "worker.log").read_text()

    warm = train(tmp_path / "warm")
    assert worker_pid(warm) == waiting  # the standby became this run's worker
    assert "started from the standby" in (warm / "worker.log").read_text()
    assert len(losses(warm)) == STEPS and losses(warm) == pytest.approx(losses(cold), abs=1e-5)
    assert (warm / "final" / "adapter_model.safetensors").is_file()

    after = wait_for(standby.pid, "the next standby")  # the launch started another for the next one
    assert after != waiting
    place = standby._file(".sock").parent
    assert place.stat().st_mode & 0o777 == 0o700  # nobody else can reach it


def _autogroup_nice(pid: int) -> int:
    return int(Path(f"/proc/{pid}/autogroup").read_text().split()[-1])


def _thread_nices(pid: int) -> dict[str, int]:
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        found[f"{name}-{task.name}"] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroup scheduling here")
def test_a_waiting_standby_gives_way_and_the_run_it_takes_does_not(standby_on, tmp_path, demo_model):
    standby.ensure()
    waiting = wait_for(lambda: standby.ready() and standby.pid(), "the standby to finish its imports")
    assert _autogroup_nice(waiting) == 19  # while it waits, any training run has the CPU first
    runs = tmp_path / "runs"
    finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs), "--detach", "--set",
            "train.max_steps=100000", "--set", "train.save_steps=100000", check=True)
    (run_dir,) = runs.iterdir()
    wait_for(lambda: any(e["type"] == "step" for e in events(run_dir)), "the first step")
    try:
        assert worker_pid(run_dir) == waiting
        assert _autogroup_nice(waiting) == 0  # a session and group of its own, at normal priority
        computing = {name: nice for name, nice in _thread_nices(waiting).items() if not name.startswith("jemalloc")}
        assert set(computing.values()) == {0}, computing  # no thread the run computes on kept the imports' nice
    finally:
        finetty("stop", run_dir.name, "--runs-dir", str(runs))
        wait_for(lambda: not rundir.is_live(run_dir), "the run to stop")


@pytest.mark.slow
def test_a_standby_refuses_a_launcher_with_another_environment_and_makes_way(standby_on, tmp_path, demo_model):
    standby.ensure()
    old = wait_for(lambda: standby.ready() and standby.pid(), "the standby to finish its imports")

    run_dir = train(tmp_path / "runs", env={"FINETTY_SOMETHING_NEW": "1"})  # read at import time, for all it knows
    assert worker_pid(run_dir) != old  # a fresh worker trained it
    assert "from the standby" not in (run_dir / "worker.log").read_text()
    assert [e for e in events(run_dir) if e["type"] == "run_finished"]
    wait_for(lambda: not alive(old), "the stale standby to leave")
    assert wait_for(standby.pid, "a standby for the new environment") != old
    assert "differs in FINETTY_SOMETHING_NEW" in standby._file(".log").read_text()


def test_an_idle_standby_leaves_on_its_own(standby_on, monkeypatch):
    monkeypatch.setenv(standby.IDLE_ENV, "1")
    standby.ensure()
    pid = wait_for(standby.pid, "the standby to start")
    wait_for(lambda: not alive(pid), "the idle standby to leave", timeout=180)
    assert not standby._file(".sock").exists()


def test_a_run_a_standby_was_not_warmed_for_gets_a_fresh_worker(tmp_path):
    from finetty.core.recipe import recipe as recipe_mod
    from finetty.core.plugin.registry import load_plugins

    registry = load_plugins()
    lora = recipe_mod.load(RECIPES / "demo-lora.yaml", [], registry)
    assert standby.serves(lora)
    assert not standby.serves(recipe_mod.load(RECIPES / "demo-qlora.yaml", [], registry))  # bitsandbytes
    assert not standby.serves(recipe_mod.load(RECIPES / "demo-lora.yaml", ["launch.num_processes=2"], registry))
    assert not standby.serves(recipe_mod.load(RECIPES / "demo-lora.yaml", ["train.optim=adamw_bnb_8bit"], registry))


def test_the_fingerprint_follows_what_the_imports_read_and_not_the_terminal():
    env = dict(os.environ)
    same = standby.fingerprint(env)
    assert standby.fingerprint({**env, "SSH_CONNECTION": "10.0.0.1 5 10.0.0.2 22", "TERM": "screen",
                                "COLUMNS": "80", "PWD": "/elsewhere"}) == same
    assert standby.fingerprint({**env, "HF_HUB_OFFLINE": "0"}) != same
    assert standby.fingerprint({**env, "CUDA_VISIBLE_DEVICES": "1"}) != same
    assert standby.differences(same, standby.fingerprint({**env, "HF_HOME": "/elsewhere"})) == ["HF_HOME"]


def test_the_fingerprint_changes_when_a_package_is_installed(monkeypatch, tmp_path):
    packages = tmp_path / "site-packages"
    packages.mkdir()
    monkeypatch.syspath_prepend(str(packages))
    before = standby.fingerprint()
    (packages / "newpkg-1.0.dist-info").mkdir()  # what pip install leaves
    os.utime(packages, ns=(0, os.stat(packages).st_mtime_ns + 1_000_000))  # a coarse clock may not tick by itself
    assert standby.differences(before, standby.fingerprint()) == ["software"]



def test_no_standby_in_a_folder_others_can_enter(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    shared = tmp_path / f"finetty-{os.getuid()}"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    assert standby._place() is None
    assert standby.hand_over(tmp_path, 0) is None and not standby.ready()
    standby.ensure()
    assert list(shared.iterdir()) == []  # nothing started, nothing written there
