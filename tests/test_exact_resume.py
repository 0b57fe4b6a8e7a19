"""Resume in the middle of an epoch: every later loss equals the uninterrupted run's.

The demo has 5 optimizer steps an epoch; with ``save_steps: 7`` the newest
checkpoint before a kill after step 10 is step 7, two steps into the second
epoch. The resumed worker must rebuild exactly the data order, sampler and
random state the uninterrupted worker had there, packed and unpacked.
"""

from __future__ import annotations

import pytest

from finetty.core.run import rundir

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
