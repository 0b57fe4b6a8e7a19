"""Checkpoints that prove themselves: sizes and hashes in the marker, checked on resume.

A damaged newest checkpoint (a truncated safetensors file, as a full disk or
a bad copy leaves) is named, moved aside and never deleted, and the resume
goes on from the newest intact one.
"""

from __future__ import annotations

import json

import pytest

from finetty.core.run import events as events_mod
from finetty.core.run import rundir

from .conftest import RECIPES, finetty, only_run


def _checkpoint(run, step: int, files: dict[str, bytes]):
    folder = run / rundir.CHECKPOINTS / rundir.checkpoint_name(step)
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    (folder / rundir.COMPLETE_MARKER).write_text(json.dumps({"step": step, "files": rundir.describe_files(folder)}))
    return folder


def test_a_damaged_file_is_named_and_its_checkpoint_moved_aside(tmp_path):
    run = tmp_path / "run"
    older = _checkpoint(run, 5, {"adapter_model.safetensors": b"a" * 100, "optimizer.pt": b"o" * 50})
    newer = _checkpoint(run, 10, {"adapter_model.safetensors": b"b" * 100, "optimizer.pt": b"p" * 50})
    newest = _checkpoint(run, 15, {"adapter_model.safetensors": b"c" * 100, "optimizer.pt": b"q" * 50})
    (newest / "adapter_model.safetensors").write_bytes(b"c" * 40)  # truncated
    (newer / "optimizer.pt").write_bytes(b"X" * 50)  # same size, other bytes
    said = []
    assert rundir.intact_checkpoint(run, report=said.append) == older
    assert said[0].startswith("checkpoint step-000015 is damaged: adapter_model.safetensors has 40 bytes where "
                              "the marker recorded 100; moved aside to checkpoints/corrupt-step-000015")
    assert said[1].startswith("checkpoint step-000010 is damaged: optimizer.pt has sha256 ")
    assert "where the marker recorded" in said[1]
    assert said[2:] == ["resuming from step-000005, the newest intact checkpoint"]
    aside = sorted(p.name for p in (run / rundir.CHECKPOINTS).iterdir())
    assert aside == ["corrupt-step-000010", "corrupt-step-000015", "step-000005"]
    assert (run / rundir.CHECKPOINTS / "corrupt-step-000015" / "adapter_model.safetensors").read_bytes() == b"c" * 40
    assert [step for step, _ in rundir.complete_checkpoints(run)] == [5]


def test_a_missing_file_and_an_old_marker(tmp_path):
    run = tmp_path / "run"
    old = run / rundir.CHECKPOINTS / "step-000003"
    old.mkdir(parents=True)
    (old / "adapter_model.safetensors").write_bytes(b"x")
    (old / rundir.COMPLETE_MARKER).write_text(json.dumps({"step": 3, "files": ["adapter_model.safetensors"]}))
    assert rundir.checkpoint_problem(old) is None  # a marker of names only: present is all it can say
    newer = _checkpoint(run, 6, {"adapter_model.safetensors": b"y" * 10})
    (newer / "adapter_model.safetensors").unlink()
    said = []
    assert rundir.intact_checkpoint(run, move_aside=False, report=said.append) == old
    assert said == ["checkpoint step-000006 is damaged: adapter_model.safetensors is missing; left where it is; "
                    "looking for an earlier intact one", "resuming from step-000003, the newest intact checkpoint"]


@pytest.mark.slow
def test_resume_skips_a_truncated_newest_checkpoint_and_says_why(tmp_path, demo_model):
    runs = tmp_path / "runs"
    settings = ["--set", "train.max_steps=14", "--set", "train.save_steps=5", "--set", "train.logging_steps=1"]
    killed = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs), *settings,
                     env={"FINETTY_FAULT": "sigkill-after-step@12"})
    assert killed.returncode != 0
    run = only_run(runs)
    first_life = {e["step"]: e["loss"] for e in events_mod.read_all(run) if e["type"] == "step"}
    assert max(first_life) == 12
    newest = rundir.latest_checkpoint(run)
    assert newest.name == "step-000010"
    marker = json.loads((newest / rundir.COMPLETE_MARKER).read_text())
    weights = newest / "adapter_model.safetensors"
    assert marker["files"]["adapter_model.safetensors"]["size"] == weights.stat().st_size
    size = weights.stat().st_size
    with open(weights, "r+b") as handle:
        handle.truncate(size // 2)

    resumed = finetty("train", "--resume", run.name, "--runs-dir", str(runs))
    assert resumed.returncode == 0, (resumed.stdout, resumed.stderr)
    said = " ".join(resumed.stdout.split())
    assert (f"checkpoint step-000010 is damaged: adapter_model.safetensors has {size // 2} bytes where the marker "
            f"recorded {size}; moved aside to checkpoints/corrupt-step-000010") in said, said
    assert "resuming from step-000005, the newest intact checkpoint" in said
    started = [e for e in events_mod.read_all(run) if e["type"] == "run_started"]
    assert started[-1]["resumed_from"] == "checkpoints/step-000005"
    aside = run / rundir.CHECKPOINTS / "corrupt-step-000010"
    assert (aside / "adapter_model.safetensors").stat().st_size == size // 2  # kept, not deleted
    second_life = {}
    seen_resume = False
    for event in events_mod.read_all(run):
        seen_resume = seen_resume or (event["type"] == "worker_started" and event.get("resume"))
        if seen_resume and event["type"] == "step":
            second_life[event["step"]] = event["loss"]
    assert sorted(second_life) == list(range(6, 15))
    for step in range(6, 13):  # the same steps from the intact checkpoint: the same losses
        assert second_life[step] == pytest.approx(first_life[step], abs=1e-4), step
    assert rundir.summarize(run).status == "finished"
