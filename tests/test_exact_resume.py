"""Resume in the middle of an epoch: every later loss equals the uninterrupted run's.

The demo has 5 optimizer steps an epoch; with ``save_steps: 7`` the newest
checkpoint before a kill after step 10 is step 7, two steps into the second
epoch. The resumed worker must rebuild exactly the data order, sampler and
random state the uninterrupted worker had there, packed and unpacked.

Every built-in method resumes the same way (its adapter, optimizer and
random state restored), checked in process on a shorter run.
"""

from __future__ import annotations

import json
import shutil

import pytest

from finetty.core.plugin.registry import load_plugins
from finetty.core.run import rundir
from finetty.core.run.events import EventWriter
from finetty.core.train import worker

from . import inprocess
from .conftest import RECIPES, finetty, losses, only_run

RECIPE = str(RECIPES / "demo-lora.yaml")
SETTINGS = ["--set", "train.max_steps=16", "--set", "train.save_steps=7", "--set", "train.logging_steps=1"]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("packing", [False, True], ids=["unpacked", "packed"])
def test_sigkill_mid_epoch_then_resume_logs_the_uninterrupted_losses(tmp_path, demo_model, packing):
    settings = [*SETTINGS, "--set", f"train.packing={str(packing).lower()}"]
    straight, broken = tmp_path / "straight", tmp_path / "broken"
    finetty("train", RECIPE, "--runs-dir", str(straight), *settings, check=True)
    expected = losses(only_run(straight))
    assert sorted(expected) == list(range(1, 17))

    killed = finetty("train", RECIPE, "--runs-dir", str(broken), *settings,
                     env={"FINETTY_FAULT": "sigkill-after-step@10"})
    assert killed.returncode != 0, killed.stdout
    run = only_run(broken)
    assert max(losses(run)) == 10 and rundir.summarize(run).status == "lost"
    assert [step for step, _ in rundir.complete_checkpoints(run)] == [7]  # mid-epoch: 7 = 5 + 2

    resumed = finetty("train", "--resume", run.name, "--runs-dir", str(broken))
    assert resumed.returncode == 0, resumed.stderr
    assert "step-000007" in resumed.stdout
    got = losses(run)
    assert sorted(got) == sorted(expected)
    for step in range(8, 17):
        assert got[step] == pytest.approx(expected[step], abs=1e-4), step


#: Every built-in method, on its demo recipe (qlora's 4-bit base runs on the CPU through bitsandbytes).
METHODS = ["full", "lora", "qlora", "dora", "ia3", "adapter", "prefix", "prompt"]
#: 7 steps, checkpoints at 3 and 6: cut back to "killed after step 4", the resume starts at step 3, mid-epoch
#: (the demo's 5 steps an epoch), and steps 4 to 7 cross the epoch boundary.
SHORT = ["train.max_steps=7", "train.save_steps=3", "train.logging_steps=1", "train.save_total_limit=3"]


def _as_if_killed_after(run_dir, step: int, keep_checkpoint: int) -> None:
    """What a SIGKILL right after ``step`` leaves: events through that step, no newer checkpoint, no result.

    The checkpoint kept is the very one the uninterrupted worker wrote, so the resumed run starts from the
    state a killed worker would have left; whatever the resume gets wrong shows in the losses after it."""
    for found, path in rundir.complete_checkpoints(run_dir):
        if found > keep_checkpoint:
            shutil.rmtree(path)
    shutil.rmtree(run_dir / rundir.FINAL, ignore_errors=True)
    kept = []
    for line in (run_dir / "events.jsonl").read_text().splitlines():
        event = json.loads(line)
        if event.get("type") in ("run_finished", "run_failed", "stopped"):
            break
        if event.get("type") == "step" and event["step"] > step:
            break
        kept.append(line)
    (run_dir / "events.jsonl").write_text("\n".join(kept) + "\n")


def test_every_method_resumes_mid_epoch_with_the_uninterrupted_losses(tmp_path, demo_model, monkeypatch):
    registry = load_plugins()
    assert set(METHODS) <= set(registry.methods), sorted(registry.methods)
    wrong = {}
    for method in METHODS:
        straight = inprocess.train(RECIPES / f"demo-{method}.yaml", tmp_path / method, SHORT,
                                   monkeypatch=monkeypatch, registry=registry)
        expected = losses(straight)
        assert sorted(expected) == list(range(1, 8)), method
        broken = tmp_path / f"{method}-resumed" / straight.name
        shutil.copytree(straight, broken)
        _as_if_killed_after(broken, 4, keep_checkpoint=3)
        assert [step for step, _ in rundir.complete_checkpoints(broken)] == [3]
        writer = EventWriter(broken)
        with monkeypatch.context() as patch:
            patch.setattr(worker, "load_plugins", lambda: registry)
            try:
                code = worker.train(broken, writer, worker.Requests(), resume=True)
            except Exception as exc:  # every method is tried; the failures are reported together
                wrong[method] = f"resume raised {type(exc).__name__}: {exc}"
                continue
            finally:
                writer.close()
        assert code == 0, method
        got = losses(broken)
        assert sorted(got) == list(range(1, 8)), method
        off = {step: (expected[step], got[step]) for step in range(4, 8)
               if got[step] != pytest.approx(expected[step], abs=1e-4)}
        if off:
            wrong[method] = off
    assert not wrong, wrong
