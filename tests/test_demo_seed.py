"""Building the tiny demo leaves the global random state alone, so the first run in a fresh home is reproducible."""

from __future__ import annotations

import random

import numpy as np
import pytest

from finetty.core.data import demo

from . import inprocess
from .conftest import RECIPES, losses


def test_building_the_demo_draws_nothing_from_the_global_rngs(tmp_path):
    import torch

    torch.manual_seed(1234)
    random.seed(1234)
    np.random.seed(1234)
    before = torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    demo.build(tmp_path / "demo", config_overrides={"num_hidden_layers": 1, "hidden_size": 32,
                                                     "intermediate_size": 64})
    after = torch.random.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    assert torch.equal(before[0], after[0]), "the demo build moved torch's global RNG"
    assert before[1] == after[1] and (before[2] == after[2]).all()


@pytest.mark.slow
def test_the_first_run_in_a_fresh_home_logs_what_a_later_run_logs(tmp_path, monkeypatch):
    monkeypatch.setenv("FINETTY_HOME", str(tmp_path / "fresh-home"))
    assert not demo.demo_dir().exists()
    overrides = ["train.max_steps=4", "train.logging_steps=1", "train.save_steps=1000"]
    first = inprocess.train(RECIPES / "demo-lora.yaml", tmp_path / "runs", overrides, monkeypatch=monkeypatch)
    assert demo.demo_dir().exists()  # the first run built it
    later = inprocess.train(RECIPES / "demo-lora.yaml", tmp_path / "runs", overrides, monkeypatch=monkeypatch)
    assert sorted(losses(first)) == [1, 2, 3, 4]
    assert losses(first) == losses(later)
