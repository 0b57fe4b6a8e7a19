"""Out of memory, injected (``FINETTY_TEST_OOM``, see core/memory/oom.py): a clear failure that keeps the last checkpoint,
or a smaller micro-batch that resumes with the same data position and effective batch; and the shrink policy."""

from __future__ import annotations

import pytest

from finetty.core.memory import gpu
from finetty.core.memory import oom
from finetty.core.run import rundir
from finetty.core.train import worker

from . import inprocess
from .conftest import RECIPES, events, finetty, losses, only_run
from .fake_nvml import GIB, FakeNvml

RECIPE = RECIPES / "demo-lora.yaml"
STEPS = ["train.max_steps=12", "train.logging_steps=1", "train.warmup_steps=2"]


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, demo_model):
    """Losses of the recipe left alone (micro-batch 8, accumulation 1)."""
    with pytest.MonkeyPatch.context() as patch:
        run = inprocess.train(RECIPE, tmp_path_factory.mktemp("baseline"), STEPS + ["train.save_steps=100"],
                              monkeypatch=patch)
    return losses(run)


def _same_losses(found: dict, expected: dict, steps):
    for step in steps:
        assert found[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-4), (step, found[step], expected[step])


def test_out_of_memory_fails_with_where_peak_and_advice_and_keeps_the_checkpoint(runs_dir, demo_model):
    result = finetty("train", str(RECIPE), "--runs-dir", str(runs_dir), "--set", "train.max_steps=12",
                     "--set", "train.save_steps=5", env={oom.TEST_OOM_ENV: "7"})
    assert result.returncode != 0
    run = only_run(runs_dir)
    found = events(run)
    failed = found[-1]
    assert failed["type"] == "run_failed"
    reason = failed["reason"]
    assert "CUDA out of memory at step 7 (forward pass)" in reason
    assert "micro-batch 8 x up to 256 tokens" in reason
    assert "peak unknown (no CUDA device)" in reason  # this machine has no GPU; on one it is torch's peak
    assert "the estimate for this recipe is" in reason and "auto_shrink_batch=true" in reason
    assert f"step-000005) is intact: `finetty train --resume {run.name}`" in reason
    assert "\n" not in reason
    assert [path.name for _, path in rundir.complete_checkpoints(run)] == ["step-000005"]
    assert not (run / "checkpoints" / ".staging").exists()
    # a CPU run's events carry host memory, the watermark, and one word that no GPU is watched
    memory = [e for e in found if e["type"] == "memory"]
    assert memory and all(e["watermark"] == 0.9 and e["gpus"] == [] and e["host"]["total"] > 0 for e in memory)
    assert sum(1 for e in found if e["type"] == "warning" and "not monitored" in e["message"]) == 1


def test_auto_shrink_resumes_from_the_last_checkpoint_with_the_same_effective_batch(
        tmp_path, monkeypatch, baseline):
    monkeypatch.setenv(oom.TEST_OOM_ENV, "7:4")  # step 7 runs out of memory with more than 4 rows
    run = inprocess.train(RECIPE, tmp_path, STEPS + ["train.save_steps=5", "train.auto_shrink_batch=true"],
                          monkeypatch=monkeypatch)
    found = events(run)
    shrink = [e for e in found if e["type"] == "shrink"]
    assert len(shrink) == 1
    assert shrink[0]["micro_batch"] == 4 and shrink[0]["gradient_accumulation_steps"] == 2
    assert shrink[0]["previous_micro_batch"] == 8 and shrink[0]["checkpoint"] == "checkpoints/step-000005"
    assert "out of memory at step 7 (forward pass)" in shrink[0]["reason"]
    assert found[-1]["type"] == "run_finished" and found[-1]["step"] == 12
    _same_losses(losses(run), baseline, range(1, 13))  # steps 6-12 again, on the same data, same batch


def test_auto_shrink_before_any_checkpoint_starts_over_from_the_initial_weights(tmp_path, monkeypatch, baseline):
    monkeypatch.setenv(oom.TEST_OOM_ENV, "3:2")  # micro-batches 8 and 4 both run out at step 3
    run = inprocess.train(RECIPE, tmp_path, STEPS + ["train.save_steps=100", "train.auto_shrink_batch=true"],
                          monkeypatch=monkeypatch)
    found = events(run)
    shrinks = [(e["previous_micro_batch"], e["micro_batch"], e["gradient_accumulation_steps"], e["checkpoint"])
               for e in found if e["type"] == "shrink"]
    assert shrinks == [(8, 4, 2, None), (4, 2, 4, None)]
    assert found[-1]["type"] == "run_finished"
    _same_losses(losses(run), baseline, range(1, 13))


def test_auto_shrink_gives_up_at_micro_batch_one(tmp_path, monkeypatch, demo_model):
    monkeypatch.setenv(oom.TEST_OOM_ENV, "2")
    with pytest.raises(oom.OutOfMemoryFailure) as info:
        inprocess.train(RECIPE, tmp_path, STEPS + ["train.save_steps=100", "train.auto_shrink_batch=true"],
                        monkeypatch=monkeypatch)
    run = next(tmp_path.iterdir())
    reason = worker._failure_reason(info.value, run)
    assert "gave up: the micro-batch is already 1" in reason and "at step 2" in reason
    assert [e["micro_batch"] for e in events(run) if e["type"] == "shrink"] == [4, 2, 1]


def test_shrink_policy_checkpoints_then_continues_with_half_the_micro_batch(tmp_path, monkeypatch, baseline):
    frames = [{0: (10 * GIB, 24 * GIB, 50)}] * 2 + [{0: (23 * GIB, 24 * GIB, 99)}]
    lib = FakeNvml(frames)
    monkeypatch.setattr(gpu, "_load_pynvml", lambda: lib)
    run = inprocess.train(RECIPE, tmp_path, STEPS + ["train.save_steps=100", "monitor.interval_s=0.05",
                                                      "monitor.on_watermark=shrink"], monkeypatch=monkeypatch)
    found = events(run)
    assert [(e["state"], e["policy"]) for e in found if e["type"] == "watermark"] == [("crossed", "shrink")]
    shrink = [e for e in found if e["type"] == "shrink"]
    assert len(shrink) == 1 and shrink[0]["micro_batch"] == 4 and shrink[0]["gradient_accumulation_steps"] == 2
    assert "watermark" in shrink[0]["reason"] and shrink[0]["checkpoint"].startswith("checkpoints/step-")
    assert found[-1]["type"] == "run_finished" and found[-1]["step"] == 12
    _same_losses(losses(run), baseline, range(1, 13))


def test_recipe_refuses_bad_monitor_settings(tmp_path):
    from finetty.core.recipe import recipe as recipe_mod
    from finetty.core.errors import InputError
    from finetty.core.plugin.registry import load_plugins

    for overrides, words in ((["monitor.watermark=0"], "watermark"), (["monitor.watermark=1.5"], "at most"),
                             (["monitor.on_watermark=panic"], "warn, checkpoint, stop, shrink"),
                             (["monitor.interval=3"], "interval_s"),
                             (["launch.num_processes=2", "monitor.on_watermark=shrink"], "single process"),
                             (["launch.num_processes=2", "train.auto_shrink_batch=true"], "single process")):
        with pytest.raises(InputError) as info:
            recipe_mod.load(RECIPE, overrides, load_plugins())
        assert words in str(info.value), (overrides, str(info.value))
    recipe = recipe_mod.load(RECIPE, ["monitor.watermark=1"], load_plugins())
    assert recipe.monitor == {"interval_s": 2.0, "watermark": 1, "on_watermark": "warn"}
