"""A disk with 0 bytes free still gets its reason: the worker's reserve is given back to say why.

The run directory lives on a small tmpfs mounted for the test (root only);
once training runs, the test fills every free byte, so the next checkpoint
(or event) fails with a real ENOSPC.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from finetty.core.run import events as events_mod
from finetty.core.run import rundir

from .conftest import RECIPES, finetty, only_run, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_disk(tmp_path):
    """A 48 MiB tmpfs, unmounted after the test (skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m,mode=0700", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _fill(folder) -> int:
    """Write zeros into ``folder`` until the filesystem says ENOSPC; returns the bytes written."""
    written = 0
    with open(folder / "filler", "wb", buffering=0) as handle:
        block = b"\0" * 2**16
        while True:
            try:
                written += handle.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        for size in (4096, 512, 1):  # the last partial blocks too: not one byte left
            while True:
                try:
                    written += handle.write(b"\0" * size)
                except OSError:
                    break
    return written


def test_zero_bytes_free_still_leaves_run_failed_with_the_disk_reason(tiny_disk, demo_model):
    runs = tiny_disk / "runs"
    out = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs), "--detach",
                  "--set", "train.max_steps=400", "--set", "train.save_steps=3", "--set", "train.logging_steps=1")
    assert out.returncode == 0, out.stderr
    run = only_run(runs)
    wait_for(lambda: any(e["type"] == "checkpoint" for e in events_mod.read_all(run)), "the first checkpoint")
    assert (run / ".disk-reserve").stat().st_size == 4 * 2**20
    _fill(tiny_disk)
    assert os.statvfs(tiny_disk).f_bavail == 0
    wait_for(lambda: not rundir.is_live(run), "the worker to end", timeout=300)

    failed = [e for e in events_mod.read_all(run) if e["type"] == "run_failed"]
    assert len(failed) == 1, events_mod.read_all(run)[-5:]
    assert failed[0]["reason"].startswith("the disk is full"), failed[0]["reason"]
    assert f"finetty train --resume {run.name}" in failed[0]["reason"]
    assert not (run / rundir.CHECKPOINTS / ".staging").exists()
    assert not (run / ".disk-reserve").exists()
    assert rundir.summarize(run).status == "failed"
    assert rundir.complete_checkpoints(run)  # the checkpoints before the disk filled are still there
