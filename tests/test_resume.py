"""Kill the worker with SIGKILL halfway; resuming logs the same losses as a run left alone.

The demo trains 5 steps an epoch; checkpoints every 7 steps put the one the
resume starts from (step 21) in the middle of an epoch.
"""

import functools
import os
import signal

import pytest

from finetty.core.run import rundir

from .conftest import RECIPES, events, finetty, losses, only_run
from .conftest import wait_for as conftest_wait_for

SETTINGS = ["--set", "train.max_steps=40", "--set", "train.save_steps=7", "--set", "train.logging_steps=1"]


#: a deadline a loaded machine can meet while it trains (not a sleep)
wait_for = functools.partial(conftest_wait_for, timeout=600.0)


@pytest.mark.slow
def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, demo_model):
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    assert finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(straight), *SETTINGS).returncode == 0
    expected = losses(only_run(straight))

    out = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(broken), "--detach", *SETTINGS)
    assert out.returncode == 0, out.stderr
    run = only_run(broken)
    wait_for(lambda: (run / "events.jsonl").exists() and any(
        e["type"] == "step" and e["step"] >= 22 for e in events(run)))
    os.kill(rundir.lock_holder(run), signal.SIGKILL)
    wait_for(lambda: not rundir.is_live(run))
    assert rundir.summarize(run).status == "lost"
    listed = finetty("runs", "--runs-dir", str(broken))
    assert "lost" in listed.stdout and f"--resume {run.name}" in listed.stdout

    resumed = finetty("train", "--resume", run.name, "--runs-dir", str(broken))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and "step-000021" in resumed.stdout  # (the kill came before step 28)
    got = losses(run)
    assert set(got) == set(expected)
    for step, loss in expected.items():
        assert got[step] == pytest.approx(loss, abs=1e-4), step
    assert (run / "final" / "adapter_model.safetensors").exists()
    assert rundir.summarize(run).status == "finished"


@pytest.mark.slow
def test_stop_checkpoints_and_resume_finishes(tmp_path, demo_model):
    finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(tmp_path), "--detach",
            "--set", "train.max_steps=400", "--set", "train.save_steps=1000")
    run = only_run(tmp_path)
    wait_for(lambda: (run / "events.jsonl").exists() and any(e["type"] == "step" for e in events(run)))
    assert finetty("checkpoint", run.name, "--runs-dir", str(tmp_path)).returncode == 0
    wait_for(lambda: any(e["type"] == "checkpoint" for e in events(run)))
    again = finetty("train", "--resume", run.name, "--runs-dir", str(tmp_path))
    assert again.returncode == 2 and "live worker" in again.stderr and str(rundir.lock_holder(run)) in again.stderr
    assert finetty("stop", run.name, "--runs-dir", str(tmp_path)).returncode == 0
    wait_for(lambda: rundir.summarize(run).status == "stopped")
    stopped = [e for e in events(run) if e["type"] == "stopped"][0]
    assert stopped["checkpoint"] == f"checkpoints/{rundir.checkpoint_name(stopped['step'])}"
    assert finetty("stop", run.name, "--runs-dir", str(tmp_path)).returncode == 2  # nothing live to stop
    done = finetty("train", "--resume", run.name, "--runs-dir", str(tmp_path), "--set", "x=1")
    assert done.returncode == 2  # a resume runs the run's own recipe


def test_resume_with_set_trains_longer_and_records_the_change(tmp_path, demo_model):
    """Resuming a finished run with --set train.max_steps=N+2 trains exactly two more steps from its last
    checkpoint, rewrites recipe.yaml and records the change; a key that would train something else is refused
    with exit 2, naming it, and changes nothing."""
    import yaml

    short = ["--set", "train.max_steps=4", "--set", "train.save_steps=4", "--set", "train.logging_steps=1"]
    assert finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(tmp_path), *short).returncode == 0
    run = only_run(tmp_path)
    assert sorted(losses(run)) == [1, 2, 3, 4]
    recipe_before = (run / "recipe.yaml").read_text()
    events_before = len(events(run))

    refused = finetty("train", "--resume", run.name, "--runs-dir", str(tmp_path), "--set", "method=full",
                      "--set", "train.learning_rate=1")
    assert refused.returncode == 2, refused.stderr
    assert "method" in refused.stderr and "silently train something else" in refused.stderr
    assert "train.learning_rate" in refused.stderr  # every refused key named in one pass
    assert "Traceback" not in refused.stderr
    assert (run / "recipe.yaml").read_text() == recipe_before and len(events(run)) == events_before

    bad = finetty("train", "--resume", run.name, "--runs-dir", str(tmp_path), "--set", "train.max_steps=-3")
    assert bad.returncode == 2 and "max_steps" in bad.stderr, bad.stderr  # checked as a new recipe is
    assert (run / "recipe.yaml").read_text() == recipe_before

    longer = finetty("train", "--resume", run.name, "--runs-dir", str(tmp_path), "--set", "train.max_steps=6")
    assert longer.returncode == 0, longer.stderr
    assert "step-000004" in longer.stdout and "train.max_steps: 4 -> 6" in longer.stdout
    found = events(run)
    changed = [e for e in found if e["type"] == "recipe_changed"]
    assert len(changed) == 1 and changed[0]["changes"] == {"train.max_steps": {"from": 4, "to": 6}}
    assert changed[0]["checkpoint"] == "checkpoints/step-000004"
    after = found[found.index(changed[0]):]
    assert [e["step"] for e in after if e["type"] == "step"] == [5, 6]
    assert [e["step"] for e in after if e["type"] == "run_finished"] == [6]
    assert yaml.safe_load((run / "recipe.yaml").read_text())["train"]["max_steps"] == 6
    assert rundir.summarize(run).status == "finished"


def test_resume_change_keeps_notify_secrets_out_of_the_run(tmp_path, demo_model):
    """--set notify=... on a resume: the new password is kept outside the run directory, as at creation; the
    recipe and the recipe_changed event hold it masked; monitor.* changes with it."""
    from finetty.core.plugin.registry import load_plugins
    from finetty.core.recipe import recipe as recipe_mod
    from finetty.core.run import launch, notify

    registry = load_plugins()
    recipe = recipe_mod.load(RECIPES / "demo-lora.yaml", ['notify=["json://me:old-secret@127.0.0.1:9/a"]'], registry)
    run = rundir.create(tmp_path, recipe.method, recipe.to_yaml())
    change = launch.resume_change(run, ["monitor.watermark=0.8", 'notify=["json://me:new-secret@127.0.0.1:9/b"]'],
                                  registry, tmp_path)
    assert set(change.changes) == {"monitor.watermark", "notify"}
    assert change.changes["monitor.watermark"] == {"from": 0.9, "to": 0.8}
    assert "secret" not in repr(change.changes) and "127.0.0.1:9/b" in change.changes["notify"]["to"][0]
    assert notify.recipe_urls(run) == ["json://me:old-secret@127.0.0.1:9/a"]  # nothing kept before the lock

    launch._apply_change(run, change)
    assert notify.recipe_urls(run)[0].startswith("json://me:new-secret@127.0.0.1:9/b")
    for name in ("recipe.yaml", "events.jsonl"):
        assert "secret" not in (run / name).read_text(), name
    assert recipe_mod.from_run(run).monitor["watermark"] == 0.8
    assert [e["changes"] for e in events(run) if e["type"] == "recipe_changed"] == [change.changes]
