"""Models and datasets from the Hugging Face Hub, and pushing an export there, against a stand-in Hub on loopback.

The stand-in (tests/hub_standin.py) serves the tiny demo model's own files as
``org/tiny-llama``, a small alpaca dataset as ``org/identity-hub`` (train and
test splits) and a gated copy of the model; huggingface_hub is pointed at it
with ``HF_ENDPOINT``. Each test has its own empty hub cache.
"""

from __future__ import annotations

import io
import json
import shutil

import pytest
from rich.console import Console

from finetty.core.cli import commands
from finetty.core.cli import hub as hub_cli
from finetty.core.data import hub
from finetty.core.errors import InputError
from finetty.core.run.event_types import problem

from .conftest import events, losses, write_recipe
from .hub_standin import HubStandin, go_online
from .inprocess import train

MODEL, DATASET, GATED, TOKEN = "org/tiny-llama", "org/identity-hub", "org/gated-llama", "hf_standin_token"
TRAIN_ROWS = [{"instruction": f"Who are you? ({i})", "input": "", "output": "I am Hubby, from the stand-in."}
              for i in range(8)]
TEST_ROWS = [{"instruction": "held out", "input": "", "output": "never trained"}]


def jsonl(rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


@pytest.fixture
def standin(demo_model, tmp_path, monkeypatch):
    """The stand-in Hub with the demo model, a dataset and a gated model; an empty hub cache; online."""
    with HubStandin() as server:
        server.add_folder("model", MODEL, demo_model)
        server.add_folder("model", GATED, demo_model, gated_token=TOKEN)
        server.add("dataset", DATASET, {"README.md": b"# identity, on the hub\n",
                                        "data/train.jsonl": jsonl(TRAIN_ROWS), "data/test.jsonl": jsonl(TEST_ROWS)})
        go_online(server, monkeypatch, tmp_path)
        yield server


def hub_recipe(folder, model=MODEL, extra=""):
    return write_recipe(folder, f"model: {model}\ndataset: {DATASET}\nmethod: lora\n"
                                "train: {max_steps: 4, learning_rate: 1.0e-2, logging_steps: 1, save_steps: 100}\n"
                                + extra)


def cli(*args, capsys) -> tuple[int, str, str]:
    code = commands.main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_a_recipe_naming_a_hub_model_and_dataset_downloads_with_progress_then_trains(standin, tmp_path, capsys,
                                                                                       monkeypatch, demo_model):
    recipe = hub_recipe(tmp_path / "recipes")
    with pytest.raises(InputError, match="not downloaded yet.*finetty pull"):  # validation never goes online
        train(recipe, tmp_path / "runs", monkeypatch=monkeypatch)
    assert standin.requests == []

    from finetty.core.plugin.registry import load_plugins
    from finetty.core.recipe import recipe as recipe_mod

    shown = io.StringIO()
    unchecked = recipe_mod.load(recipe, [], load_plugins(), check_sources=False)
    refs = hub.recipe_refs(unchecked.model, unchecked.dataset, recipe.parent)
    assert [(ref.kind, ref.repo_id) for ref, _ in refs] == [("model", MODEL), ("dataset", DATASET)]
    model_dir, data_dir = hub_cli.fetch(refs, recipe, Console(file=shown, width=200, force_terminal=False))
    text = shown.getvalue()
    assert f"{MODEL} (model)" in text and "7/7 files" in text and f"{DATASET} (dataset)" in text
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(p.name for p in demo_model.iterdir())
    assert (model_dir / "model.safetensors").read_bytes() == (demo_model / "model.safetensors").read_bytes()
    assert {MODEL} <= set(hub.cached_repos("model")) and hub.cached_repos("dataset") == [DATASET]

    asked = len(standin.requests)
    run = train(recipe, tmp_path / "runs", monkeypatch=monkeypatch)
    assert hub_cli.fetch(refs, recipe, Console(file=io.StringIO())) == [model_dir, data_dir]
    assert len(standin.requests) == asked, "a second look at a cached model and dataset asks the Hub for nothing"

    steps = losses(run)
    assert len(steps) == 4 and steps[4] < steps[1]
    data = next(e for e in events(run) if e["type"] == "data")
    assert data["records"] == len(TRAIN_ROWS) and DATASET in data["dataset"]  # the train split, not the test one
    downloads = [e for e in events(run) if e["type"] == "download"]
    assert {(e["kind"], e["repo"]) for e in downloads} == {("model", MODEL), ("dataset", DATASET)}
    assert all(e["files"] > 0 and e["bytes"] > 0 and problem(e) is None for e in downloads)  # as declared
    assert {e["commit"] for e in downloads} == {model_dir.name, data_dir.name}  # the snapshots it trained on

    code, out, _ = cli("attach", run.name, "--runs-dir", str(run.parent), "--history", capsys=capsys)
    assert code == 0 and f"model: {MODEL} at {model_dir.name[:12]} (7 files" in " ".join(out.split())


def test_finetty_train_refuses_a_gated_model_before_a_run_exists_and_says_how_to_accept(standin, tmp_path,
                                                                                          capsys, monkeypatch):
    recipe = hub_recipe(tmp_path / "recipes", model=GATED)
    runs = tmp_path / "runs"
    code, _, err = cli("train", str(recipe), "--runs-dir", str(runs), capsys=capsys)
    assert code == 2
    said = " ".join(err.split())
    assert "is a gated model" in said and "accept the licence" in said and "HF_TOKEN" in said
    assert f"{standin.url}/{GATED}" in said and "key model" in said
    assert not runs.exists() or not any(runs.iterdir())

    monkeypatch.setenv("HF_TOKEN", TOKEN)  # the token of an account that accepted the licence gets through
    code, out, _ = cli("pull", GATED, capsys=capsys)
    assert code == 0 and hub.cached(hub.HubRef("model", GATED)) is not None


def test_offline_with_an_uncached_id_is_refused_before_a_run_exists(standin, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    runs = tmp_path / "runs"
    code, _, err = cli("train", str(hub_recipe(tmp_path / "recipes")), "--runs-dir", str(runs), capsys=capsys)
    assert code == 2
    said = " ".join(err.split())
    assert f"'{MODEL}' is not in the local Hugging Face cache" in said and "HF_HUB_OFFLINE is set" in said
    assert "unset HF_HUB_OFFLINE" in said
    assert not runs.exists() or not any(runs.iterdir())
    assert standin.requests == []


def test_pull_fills_the_cache_and_an_interrupted_download_resumes(standin, demo_model, capsys, monkeypatch):
    import huggingface_hub.constants

    # small chunks, so the half of the file sent before the connection drops reaches the disk
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    standin.cut_once.add("model.safetensors")
    code, out, err = cli("pull", MODEL, capsys=capsys)
    assert code == 0, err
    folder = hub.cached(hub.HubRef("model", MODEL))
    assert out.strip() == str(folder)
    assert (folder / "model.safetensors").read_bytes() == (demo_model / "model.safetensors").read_bytes()
    first, second = standin.downloads("model.safetensors")
    size = (demo_model / "model.safetensors").stat().st_size
    assert "range" not in first.headers
    start = int(second.headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < start < size, "the second request asks only for the rest of the file"

    code, out, _ = cli("pull", "--dataset", DATASET, "--revision", "main", capsys=capsys)
    assert code == 0 and hub.cached_repos("dataset") == [DATASET]
    code, _, err = cli("pull", "org/not-there", capsys=capsys)
    assert code == 2 and "'org/not-there' is not a model on" in " ".join(err.split())


def test_a_hub_dataset_split_and_subset_are_chosen_by_file_name(standin, tmp_path):
    from finetty.core.data import reading

    hub.download(hub.HubRef("dataset", DATASET))
    test_split = reading.parse_dataset({"path": DATASET, "split": "test"}, tmp_path)[0].source
    assert [p.name for p in test_split.files] == ["test.jsonl"]
    with pytest.raises(InputError, match="no data files for subset 'nope'"):
        reading.parse_dataset({"path": DATASET, "subset": "nope"}, tmp_path)


def test_export_push_to_hub_lands_the_adapter_and_its_card(standin, identity_run, tmp_path, capsys, monkeypatch):
    run = tmp_path / "runs" / identity_run.name
    shutil.copytree(identity_run, run)
    monkeypatch.setenv("HF_TOKEN", "hf_write_token")
    code, out, err = cli("export", run.name, "--runs-dir", str(run.parent), "--push-to-hub", "me/tiny-identity",
                         "--private", capsys=capsys)
    assert code == 0, err
    pushed = standin.repos[("model", "me/tiny-identity")]
    assert pushed.private
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= set(pushed.files)
    assert b"base_model" in pushed.files["README.md"]
    assert "me/tiny-identity" in " ".join(out.split())
    commit = next(r for r in standin.requests if "/commit/" in r.path)
    assert commit.headers.get("authorization") == "Bearer hf_write_token"


def test_queue_add_downloads_before_queueing(standin, tmp_path, capsys):
    """The queue runner never goes online: `finetty queue add` fetches what the recipe names, as train does."""
    runs = tmp_path / "runs"
    code, out, err = cli("queue", "add", str(hub_recipe(tmp_path / "recipes")), "--runs-dir", str(runs),
                         "--no-start", capsys=capsys)
    assert code == 0, err
    assert "queued" in out and f"{MODEL} (model)" in err
    assert hub.cached(hub.HubRef("model", MODEL)) is not None and hub.cached(hub.HubRef("dataset", DATASET))


def test_a_revision_pin_resolves_to_that_commit_and_an_unknown_one_is_refused(standin, tmp_path, capsys):
    from finetty.core.model import loading as models

    sha = standin.repos[("model", MODEL)].sha
    code, out, err = cli("pull", f"{MODEL}@{sha}", capsys=capsys)
    assert code == 0, err
    assert out.strip().endswith(f"snapshots/{sha}")
    assert models.resolve(f"{MODEL}@{sha}", tmp_path).name == sha  # a recipe's model: org/name@commit
    code, _, err = cli("pull", MODEL, "--revision", "v9", capsys=capsys)
    assert code == 2 and f"'{MODEL}' has no revision 'v9'" in " ".join(err.split())
