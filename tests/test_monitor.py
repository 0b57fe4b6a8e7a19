"""The memory monitor: scripted GPUs (tests/fake_nvml.py) cross and recover, fail and disappear; each policy acts;
real runs on this CPU carry host-memory events."""

from __future__ import annotations

import threading
import time

import pytest

from finetty.core.memory import gpu
from finetty.core.memory import monitor
from finetty.core.train.worker import Requests

from . import inprocess
from .conftest import RECIPES, events
from .fake_nvml import ERROR, GIB, LOST, FakeNvml


class Recorder:
    """Collects what the sampler writes (the worker's EventWriter has the same emit)."""

    def __init__(self):
        self.events: list[dict] = []
        self.lock = threading.Lock()

    def emit(self, type_, **fields):
        with self.lock:
            self.events.append({"type": type_, **fields})
        return fields

    def of(self, kind):
        return [e for e in self.events if e["type"] == kind]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def sampler(frames, policy="warn", requests=None, clock=None, interval_s=2.0, **fake):
    recorder = Recorder()
    lib = FakeNvml(frames, **fake)
    made = monitor.Sampler(recorder, requests if requests is not None else Requests(), interval_s=interval_s,
                           watermark=0.9, policy=policy, nvml=gpu.Nvml(lib), clock=clock or Clock(),
                           pids=fake.get("pids"))
    made.open()
    return made, recorder


def frame(*used_total):
    return {i: (int(u * GIB), int(t * GIB), 40 + i) for i, (u, t) in enumerate(used_total)}


def test_several_gpus_a_crossing_and_a_recovery():
    clock = Clock()
    frames = [frame((10, 24), (5, 80)), frame((21.7, 24), (5, 80)), frame((22.5, 24), (6, 80)),
              frame((21.5, 24), (6, 80)), frame((12, 24), (6, 80)), frame((22, 24), (6, 80))]
    s, rec = sampler(frames, clock=clock, interval_s=0.0, names={0: "RTX 4090", 1: "A100"}, pids={4242},
                     process_used=3 * GIB)
    for _ in frames:
        s.sample()
        clock.now += 1
    memory = rec.of("memory")
    assert len(memory) == len(frames)
    first = memory[0]
    assert first["watermark"] == 0.9 and first["step"] is None
    assert [g["index"] for g in first["gpus"]] == [0, 1]
    assert first["gpus"][0] == {"index": 0, "name": "RTX 4090", "used": 10 * GIB, "total": 24 * GIB, "util": 40.0,
                                "process_used": 3 * GIB, "torch_allocated": None, "torch_reserved": None,
                                "torch_peak": None}
    assert set(first["host"]) == {"used", "total", "process_rss", "cpu_percent"}
    assert 0 < first["host"]["used"] <= first["host"]["total"] and first["host"]["process_rss"] > 0
    marks = [(e["gpu"], e["state"]) for e in rec.of("watermark")]
    # 21.7/24 = 90.4% crosses; 22.5 stays in the episode; 21.5 (89.6%) is within the hysteresis; 12 recovers
    assert marks == [(0, "crossed"), (0, "recovered"), (0, "crossed")]
    crossed = rec.of("watermark")[0]
    assert crossed["fraction"] == pytest.approx(21.7 / 24, abs=1e-4) and crossed["watermark"] == 0.9
    assert crossed["policy"] == "warn"
    assert s.peaks[0] == int(22.5 * GIB)


def test_memory_events_are_rate_limited_but_crossings_always_written():
    clock = Clock()
    frames = [frame((10, 24))] * 3 + [frame((23, 24))] + [frame((10, 24))] * 4
    s, rec = sampler(frames, clock=clock, interval_s=2.0)
    for _ in range(8):  # eight step samples within one second
        s.sample()
        clock.now += 0.1
    assert s.samples == 8
    written = rec.of("memory")
    assert len(written) == 3  # the first, the crossing's, the recovery's
    assert [e["state"] for e in rec.of("watermark")] == ["crossed", "recovered"]
    clock.now += 2.0
    s.sample()
    assert len(rec.of("memory")) == 4


@pytest.mark.parametrize("policy", ["warn", "checkpoint", "stop", "shrink"])
def test_each_policy_acts_once_per_episode(policy):
    requests = Requests()
    frames = [frame((10, 24)), frame((23, 24)), frame((23.5, 24))]
    s, rec = sampler(frames, policy=policy, requests=requests)
    s.micro_batch = 8
    s.sample()
    assert not (requests.stop or requests.checkpoint)
    s.sample()
    assert rec.of("watermark")[0]["policy"] == policy
    expected = {"warn": (False, False, False), "checkpoint": (False, True, False), "stop": (True, False, False),
                "shrink": (True, False, True)}[policy]
    assert (requests.stop, requests.checkpoint, s.shrink_pending) == expected
    if policy == "stop":
        assert "watermark" in requests.signal_name and "GPU 0" in requests.signal_name
    requests.stop = requests.checkpoint = False
    s.sample()  # still above: the same episode, no second action
    assert (requests.stop, requests.checkpoint) == (False, False)


def test_shrink_at_micro_batch_one_warns_and_goes_on():
    requests = Requests()
    s, rec = sampler([frame((23, 24))], policy="shrink", requests=requests)
    s.micro_batch = 1
    s.sample()
    assert not requests.stop and not s.shrink_pending
    assert "already 1" in rec.of("warning")[0]["message"]


def test_nvml_failing_mid_run_warns_once_then_host_only():
    frames = [frame((10, 24), (10, 24)), ERROR]
    s, rec = sampler(frames)
    s.sample()
    s.sample()
    s.sample()
    warnings = rec.of("warning")
    assert len(warnings) == 1 and "NVML failed mid-run" in warnings[0]["message"]
    assert "Unknown Error" in warnings[0]["message"]
    memory = rec.of("memory")
    assert len(memory[0]["gpus"]) == 2
    assert all(e["gpus"] == [] and e["host"]["total"] > 0 for e in memory[1:])


def test_a_gpu_disappearing_is_dropped_and_the_others_go_on():
    clock = Clock()
    frames = [frame((10, 24), (10, 24)), {0: (11 * GIB, 24 * GIB, 3), 1: LOST}, frame((12, 24))]
    s, rec = sampler(frames, clock=clock, interval_s=0.0, names={1: "A10"})
    for _ in range(4):
        s.sample()
        clock.now += 1
    warnings = rec.of("warning")
    assert len(warnings) == 1 and "GPU 1 (A10)" in warnings[0]["message"] and "GPU is lost" in warnings[0]["message"]
    assert [[g["index"] for g in e["gpus"]] for e in rec.of("memory")] == [[0, 1], [0], [0], [0]]


def test_no_driver_warns_once_and_samples_host_memory():
    s, rec = sampler([frame((1, 24))], no_driver=True)
    s.sample()
    s.sample()
    assert len(rec.of("warning")) == 1 and "not monitored" in rec.of("warning")[0]["message"]
    assert rec.of("memory")[0]["gpus"] == []


def test_the_thread_samples_on_its_own_and_when_poked():
    clock = Clock()
    s, rec = sampler([frame((10, 24))], clock=clock, interval_s=0.0)
    s.interval_s = 30.0  # the timer alone would not sample again during this test
    s._thread = threading.Thread(target=s._run, daemon=True)
    s._thread.start()
    deadline = time.monotonic() + 10
    while not rec.of("memory") and time.monotonic() < deadline:
        time.sleep(0.01)
    before = s.samples
    clock.now += 60
    s.poke(7)
    while s.samples == before and time.monotonic() < deadline:
        time.sleep(0.01)
    s.stop()
    assert rec.of("memory")[-1]["step"] == 7
    assert not s._thread.is_alive()


# -- in real runs ----------------------------------------------------------------------------------

SHORT = ["train.max_steps=10", "train.save_steps=100", "train.logging_steps=1", "monitor.interval_s=0.05"]


def _fake_gpus(monkeypatch, frames, **kwargs) -> FakeNvml:
    lib = FakeNvml(frames, names={0: "Fake 24GB"}, **kwargs)
    monkeypatch.setattr(gpu, "_load_pynvml", lambda: lib)
    return lib


def test_checkpoint_policy_saves_when_the_watermark_is_crossed(tmp_path, monkeypatch, demo_model):
    _fake_gpus(monkeypatch, [frame((10, 24))] * 2 + [frame((23, 24))])
    run = inprocess.train(RECIPES / "demo-lora.yaml", tmp_path, SHORT + ["monitor.on_watermark=checkpoint"],
                          monkeypatch=monkeypatch)
    found = events(run)
    crossed = [e for e in found if e["type"] == "watermark"]
    assert [(e["gpu"], e["state"], e["policy"]) for e in crossed] == [(0, "crossed", "checkpoint")]
    early = [e["step"] for e in found if e["type"] == "checkpoint" and e["step"] < 10]
    assert len(early) == 1  # save_steps is 100 (the Trainer also saves at the last step): this one is the policy's
    assert found[-1]["type"] == "run_finished"
    memory = [e for e in found if e["type"] == "memory"]
    assert memory and all(e["watermark"] == 0.9 and e["gpus"][0]["name"] == "Fake 24GB" for e in memory)


def test_stop_policy_checkpoints_and_stops(tmp_path, monkeypatch, demo_model):
    _fake_gpus(monkeypatch, [frame((10, 24))] * 2 + [frame((23, 24))])
    run = inprocess.train(RECIPES / "demo-lora.yaml", tmp_path, SHORT + ["monitor.on_watermark=stop"],
                          monkeypatch=monkeypatch)
    found = events(run)
    stopped = found[-1]
    assert stopped["type"] == "stopped" and stopped["step"] < 10 and stopped["checkpoint"]
    assert "watermark" in stopped["reason"]
    assert not (run / "final").exists()


def test_nvml_failure_mid_run_never_touches_training(tmp_path, monkeypatch, demo_model):
    _fake_gpus(monkeypatch, [frame((10, 24))] * 3 + [ERROR])
    run = inprocess.train(RECIPES / "demo-lora.yaml", tmp_path, SHORT, monkeypatch=monkeypatch)
    found = events(run)
    assert found[-1]["type"] == "run_finished" and found[-1]["step"] == 10
    warnings = [e for e in found if e["type"] == "warning" and "NVML" in e["message"]]
    assert len(warnings) == 1
    memory = [e for e in found if e["type"] == "memory"]
    assert memory[0]["gpus"] and memory[-1]["gpus"] == [] and memory[-1]["host"]["process_rss"] > 0
