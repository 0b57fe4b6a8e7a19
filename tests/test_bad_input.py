"""The bad-input corpus (tests/bad_inputs/): every case is refused before a run exists.

Each case folder holds a recipe and the dataset or model files it names;
``manifest.yaml`` says what the one message must contain. A case passes when
``finetty train`` exits 2 with a single message that starts with the file and
the place, says what is wrong and how to fix it, shows no traceback, and no
run directory was made.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import finetty

CORPUS = Path(__file__).parent / "bad_inputs"
MANIFEST = yaml.safe_load((CORPUS / "manifest.yaml").read_text())


def test_the_corpus_is_complete():
    folders = {p.name for p in CORPUS.iterdir() if p.is_dir()}
    assert folders == {e["case"] for e in MANIFEST}
    assert len(MANIFEST) >= 40
    kinds = {e["case"].split("-")[0] for e in MANIFEST}
    assert {"recipe", "dataset", "model", "set"} <= kinds
    for entry in MANIFEST:
        assert entry["says"] and entry["fix"] and entry["file"], entry["case"]


def run_in_process(args: list[str], cwd: Path, capsys, monkeypatch) -> subprocess.CompletedProcess:
    """``finetty ARGS`` through the same ``main`` the command runs, in this process.

    A subprocess per case added a second of interpreter start-up and imports to
    each of the corpus's cases and tested nothing more: the command is ``main``.
    ``test_the_command_itself_refuses_the_same_way`` runs one case for real.
    """
    from finetty.core.cli import commands

    monkeypatch.chdir(cwd)
    capsys.readouterr()
    code = commands.main(args)
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


def check_refusal(out: subprocess.CompletedProcess, entry: dict, case: Path, runs: Path) -> None:
    """Exit 2, one message: file and place first, what is wrong, the fix last; no traceback, no run directory."""
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr + out.stdout
    message = " ".join(out.stderr.split())
    assert len(out.stderr.strip().splitlines()) <= 4, out.stderr  # one message (wrapped at most a few times)
    sources = [entry["file"], str(case.resolve() / entry["file"])]
    head = [f"error: {s}, {entry['place']}: " if entry["place"] else f"error: {s}: " for s in sources]
    assert any(message.startswith(h) for h in head), (head, message)
    assert entry["says"] in message, message
    assert entry["fix"] in message and message.endswith(")"), message
    assert not runs.exists(), "no run directory for bad input"


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["case"] for e in MANIFEST])
def test_bad_input_is_refused_before_a_run_exists(tmp_path: Path, entry: dict, capsys, monkeypatch):
    case = tmp_path / entry["case"]
    shutil.copytree(CORPUS / entry["case"], case)
    runs = tmp_path / "runs"
    args = entry.get("args") or ["train", "recipe.yaml"]
    check_refusal(run_in_process([*args, "--runs-dir", str(runs)], case, capsys, monkeypatch), entry, case, runs)


@pytest.mark.parametrize("name", ["recipe-unknown-key", "dataset-alpaca-bad-history"])
def test_the_command_itself_refuses_the_same_way(tmp_path: Path, name: str):
    entry = next(e for e in MANIFEST if e["case"] == name)
    case = tmp_path / name
    shutil.copytree(CORPUS / name, case)
    runs = tmp_path / "runs"
    args = entry.get("args") or ["train", "recipe.yaml"]
    check_refusal(finetty(*args, "--runs-dir", str(runs), cwd=case), entry, case, runs)


def test_unknown_run(tmp_path):
    out = finetty("stop", "no-such-run", "--runs-dir", str(tmp_path))
    assert out.returncode == 2 and "no-such-run" in out.stderr and "finetty runs" in out.stderr
