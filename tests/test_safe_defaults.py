"""Safe defaults: names never leave their folders, child processes never go through a shell.

(trust_remote_code and the pickle audit run real trainings: see test_faults.py.)
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetty.core import paths
from finetty.core.recipe import recipe
from finetty.core.run import rundir

from .conftest import REPO, finetty

SOURCE_FOLDERS = ("core", "plugins", "tui", "bench")


def _python_files():
    for folder in SOURCE_FOLDERS:
        yield from sorted((REPO / folder).rglob("*.py")) if (REPO / folder).is_dir() else ()


def _shell_uses(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", "") if isinstance(func, ast.Attribute) else ""
        for keyword in node.keywords:
            plain = isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            if keyword.arg == "shell" and not plain:
                found.append((node.lineno, "shell=..."))
        if owner == "os" and (name in ("system", "popen") or name.startswith("spawn")):
            found.append((node.lineno, f"os.{name}"))
        if name in ("Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput") and \
                owner in ("subprocess", "") and node.args and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
            if owner == "subprocess" or name == "Popen":
                found.append((node.lineno, f"{name} with a command string"))
        if owner == "asyncio" and name == "create_subprocess_shell":
            found.append((node.lineno, "asyncio.create_subprocess_shell"))
    return found


def test_every_child_process_gets_an_argument_list():
    checked = 0
    problems = []
    for path in _python_files():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        problems += [f"{path.relative_to(REPO)}:{line}: {what}" for line, what in _shell_uses(tree)]
        checked += 1
    assert checked > 10
    assert not problems, problems


def test_the_shell_check_catches_what_it_is_for():
    bad = ast.parse("import os, subprocess\nsubprocess.run('ls -l', shell=True)\nos.system('x')\n"
                    "subprocess.Popen(f'rm {x}')\nsubprocess.check_output('ls')\n")
    good = ast.parse("import subprocess\nsubprocess.run(['ls', '-l'], shell=False)\nsubprocess.Popen(cmd)\n")
    assert len(_shell_uses(bad)) == 5 and _shell_uses(good) == []


@pytest.mark.parametrize("name", ["..", ".", "../x", "a/b", "/etc", "~", ".hidden", "", "x" * 200, "a\x00b",
                                  "run/../../etc", "..\\x", "a\nb", "run\n"])
def test_unsafe_names_are_refused(name, tmp_path):
    assert not paths.is_safe_name(name)
    with pytest.raises(ValueError):
        paths.child(tmp_path, name)


@settings(max_examples=300, deadline=None)
@given(name=st.text(max_size=40))
def test_a_safe_name_stays_in_its_folder(name):
    parent = Path("/srv/finetty/runs")
    if paths.is_safe_name(name):
        child = paths.child(parent, name)
        assert child.parent == parent and child.name == name and "/" not in name and name not in (".", "..")


@pytest.fixture
def outside_run(tmp_path) -> dict:
    """A run directory next to (not inside) the runs folder, reachable only as ``<runs>/../x``."""
    runs = tmp_path / "runs"
    runs.mkdir()
    outside = tmp_path / "x"
    outside.mkdir()
    (outside / rundir.RECIPE_FILE).write_text(recipe.Recipe().to_yaml())
    cwd = tmp_path / "elsewhere" / "deeper"
    cwd.mkdir(parents=True)
    return {"runs": runs, "outside": outside, "cwd": cwd}


@pytest.mark.parametrize("command", [["stop", "../x"], ["checkpoint", "../x"], ["attach", "../x"],
                                     ["train", "--resume", "../x"], ["train", "--resume", "runs/../x"]])
def test_run_ids_cannot_climb_out_of_the_runs_folder(outside_run, command):
    out = finetty(*command, "--runs-dir", str(outside_run["runs"]), cwd=outside_run["cwd"])
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "is neither a run directory nor a run id" in " ".join(out.stderr.split())
    assert sorted(p.name for p in outside_run["outside"].iterdir()) == [rundir.RECIPE_FILE]  # nothing started there


def test_find_takes_an_explicit_directory_but_never_a_climbing_id(outside_run):
    assert rundir.find(str(outside_run["outside"]), outside_run["runs"]) == outside_run["outside"]
    with pytest.raises(Exception) as refused:
        rundir.find("../x", outside_run["runs"])
    assert "neither a run directory nor a run id" in str(refused.value)


def test_checkpoint_names_come_from_step_numbers_only(tmp_path):
    assert rundir.checkpoint_name(40) == "step-000040"
    run = tmp_path / "run"
    (run / "checkpoints" / "step-000010").mkdir(parents=True)
    (run / "checkpoints" / "step-000010" / rundir.COMPLETE_MARKER).write_text('{"step": 10}')
    (run / "checkpoints" / "step-../../../etc").mkdir(parents=True, exist_ok=True)
    assert [step for step, _ in rundir.complete_checkpoints(run)] == [10]

