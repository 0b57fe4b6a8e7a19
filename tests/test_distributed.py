"""Two processes over gloo on the CPU: the same losses as one, one event stream, resume, a dying rank."""

import signal

import psutil
import pytest

from finetty.core.run import rundir

from .conftest import RECIPES, events, finetty, losses, only_run, wait_for

SHORT = ["--set", "train.max_steps=30", "--set", "train.save_steps=10", "--set", "train.logging_steps=2"]
TWO = ["--num-processes", "2", "--set", "train.per_device_train_batch_size=4"]


def ranks(run) -> dict[int, psutil.Process]:
    """The worker processes of a distributed run, by rank (rank 0 names itself in the lock file)."""
    rank0 = psutil.Process(rundir.lock_holder(run))
    found = {}
    for proc in rank0.parent().children():
        try:
            found[int(proc.environ().get("RANK", "-1"))] = proc
        except (psutil.Error, ValueError):
            continue
    return found


@pytest.mark.slow
def test_two_processes_match_one_and_write_one_stream(tmp_path, demo_model):
    one, two = tmp_path / "one", tmp_path / "two"
    assert finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(one), *SHORT).returncode == 0
    out = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(two), *SHORT, *TWO)
    assert out.returncode == 0, out.stdout + out.stderr
    run = only_run(two)
    started = [e for e in events(run) if e["type"] == "run_started"]
    assert len(started) == 1 and started[0]["world_size"] == 2 and started[0]["distributed_type"] == "ddp"
    steps = [e["step"] for e in events(run) if e["type"] == "step"]
    assert steps == sorted(set(steps)), "one step event per step"
    expected, got = losses(only_run(one)), losses(run)
    assert set(got) == set(expected)
    for step in expected:
        assert got[step] == pytest.approx(expected[step], abs=2e-3), step
    single_tokens = [e for e in events(only_run(one)) if e["type"] == "run_finished"][0]["tokens"]
    assert [e for e in events(run) if e["type"] == "run_finished"][0]["tokens"] == single_tokens
    log = (run / "worker.log").read_text()
    assert "[rank 0]" in log and "[rank 1]" in log
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(demo_model), str(run / "final"))


@pytest.mark.slow
def test_kill_everything_then_resume_in_two_process_mode(tmp_path, demo_model):
    out = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(tmp_path), "--detach", *SHORT, *TWO)
    assert out.returncode == 0, out.stderr
    run = only_run(tmp_path)
    wait_for(lambda: (run / "events.jsonl").exists() and any(
        e["type"] == "checkpoint" and e["step"] >= 10 for e in events(run)))
    supervisor = psutil.Process(rundir.lock_holder(run)).parent()
    for proc in [supervisor, *supervisor.children(recursive=True)]:
        proc.kill()
    wait_for(lambda: not rundir.is_live(run))
    assert rundir.summarize(run).status == "lost"
    resumed = finetty("train", "--resume", run.name, "--runs-dir", str(tmp_path))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    got = losses(run)
    assert max(got) == 30 and rundir.summarize(run).status == "finished"
    assert (run / "final" / "adapter_model.safetensors").exists()


@pytest.mark.slow
def test_a_rank_killed_mid_run_ends_the_run_naming_it(tmp_path, demo_model):
    out = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(tmp_path), "--detach",
                  "--set", "train.max_steps=5000", *TWO)
    assert out.returncode == 0, out.stderr
    run = only_run(tmp_path)
    wait_for(lambda: (run / "events.jsonl").exists() and any(e["type"] == "step" for e in events(run)))
    workers = ranks(run)
    assert set(workers) == {0, 1}
    workers[1].send_signal(signal.SIGKILL)
    wait_for(lambda: not rundir.is_live(run), timeout=120)
    summary = rundir.summarize(run)
    assert summary.status == "failed" and "rank 1" in summary.reason, summary.reason
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers.values())


@pytest.mark.slow
def test_stop_stops_every_rank_after_a_checkpoint(tmp_path, demo_model):
    finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(tmp_path), "--detach",
            "--set", "train.max_steps=5000", "--set", "train.save_steps=100000", *TWO)
    run = only_run(tmp_path)
    wait_for(lambda: (run / "events.jsonl").exists() and any(e["type"] == "step" for e in events(run)))
    workers = ranks(run)
    assert finetty("stop", run.name, "--runs-dir", str(tmp_path)).returncode == 0
    wait_for(lambda: not rundir.is_live(run), timeout=120)
    assert rundir.summarize(run).status == "stopped"
    stopped = [e for e in events(run) if e["type"] == "stopped"][0]
    assert rundir.latest_checkpoint(run).name == rundir.checkpoint_name(stopped["step"])
    assert len(list(rundir.latest_checkpoint(run).glob("rng_state_*.pth"))) == 2
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers.values())


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a GPU: FSDP can run here")
def test_fsdp_without_a_gpu_fails_with_one_clear_reason(tmp_path, demo_model):
    # on one process: FSDP asked for goes through accelerate's launcher (as on several), never silently trains as
    # a plain run; the rule that refuses it is the same for any number of processes
    out = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(tmp_path), "--set", "train.max_steps=2",
                  "--set", "launch.distributed_type=fsdp")
    assert out.returncode == 1
    run = only_run(tmp_path)
    reason = rundir.summarize(run).reason
    assert "distributed_type fsdp needs GPUs" in reason and "distributed_type: ddp" in reason, reason
    assert "plugin" not in reason  # accelerate's refusal, not blamed on the sft plugin
    assert not any(e["type"] == "step" for e in events(run))
