"""Discovery: the built-ins through entry points, broken and colliding plugins reported, training goes on."""

import textwrap
from pathlib import Path

import pytest

from finetty.core.plugin import hookspecs
from finetty.core.plugin import registry
from finetty.core.plugin_api import Method, Option, hookimpl

from .conftest import RECIPES, finetty, losses, only_run, own_plugin_names


def install_fake_distribution(site: Path, name: str, modules: dict[str, str], entry_points: dict[str, str]) -> None:
    """A real installed distribution (dist-info + modules) on a folder that goes on PYTHONPATH."""
    dist = site / f"{name.replace('-', '_')}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[finetty]\n" + "".join(f"{k} = {v}\n" for k, v in entry_points.items()))
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def broken_site(tmp_path):
    site = tmp_path / "site"
    install_fake_distribution(site, "finetty-broken", {
        "broken_plugin": "import not_a_module_anywhere\n",
        "raising_plugin": """
            from finetty.core.plugin_api import hookimpl
            @hookimpl
            def register_methods(register):
                raise RuntimeError("boom in the hook")
        """,
        "colliding_plugin": """
            from finetty.core.plugin_api import Method, hookimpl
            @hookimpl
            def register_methods(register):
                register(Method(name="lora", summary="an impostor", apply=lambda m, o, c: m,
                                load=lambda p, o, b: b()))
        """,
    }, {"broken": "broken_plugin", "raising": "raising_plugin", "colliding": "colliding_plugin"})
    return {"PYTHONPATH": str(site), "FINETTY_LOAD_PLUGINS": own_plugin_names() + ",broken,raising,colliding"}


def test_plugins_lists_builtins_with_kind_and_distribution():
    out = finetty("plugins", "--options")
    assert out.returncode == 0, out.stderr
    for name in ("lora", "full", "sft", "alpaca", "sharegpt", "messages", "text", "preference"):
        assert name in out.stdout
    assert "method" in out.stdout and "objective" in out.stdout and "data format" in out.stdout
    assert "finetty" in out.stdout and "failed" not in out.stdout
    assert "lora_alpha (int|float, default 16)" in out.stdout


def test_broken_plugins_are_listed_with_their_error_and_training_still_works(broken_site, runs_dir, demo_model):
    out = finetty("plugins", env=broken_site)
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    assert "broken" in text and "ModuleNotFoundError" in text
    assert "raising" in text and "boom in the hook" in text
    assert "colliding" in text and "already provided by plugin 'lora'" in text

    run = finetty("train", str(RECIPES / "demo-lora.yaml"), "--runs-dir", str(runs_dir),
                  "--set", "train.max_steps=6", "--set", "train.logging_steps=1", env=broken_site)
    assert run.returncode == 0, run.stderr
    assert "plugin 'broken'" in run.stderr  # said once, on stderr
    assert losses(only_run(runs_dir))


def test_recipe_naming_a_broken_plugins_method_fails_with_its_error(tmp_path, broken_site):
    site = Path(broken_site["PYTHONPATH"])
    install_fake_distribution(site / "more", "finetty-freeze", {"freeze_plugin": "raise ImportError('needs torch 9')\n"},
                              {"freeze": "freeze_plugin"})
    env = {"PYTHONPATH": f"{site}:{site / 'more'}", "FINETTY_LOAD_PLUGINS": own_plugin_names() + ",freeze"}
    (tmp_path / "r.yaml").write_text("method: freeze\n")
    out = finetty("train", str(tmp_path / "r.yaml"), "--runs-dir", str(tmp_path / "runs"), env=env)
    assert out.returncode == 2
    assert "plugin 'freeze'" in out.stderr and "needs torch 9" in out.stderr
    assert not (tmp_path / "runs").exists()


def test_allowlist_limits_what_loads(monkeypatch):
    monkeypatch.setenv("FINETTY_LOAD_PLUGINS", "lora,formats")
    found = registry.discover()
    assert set(found.methods) == {"lora"} and not found.objectives


def test_in_process_plugin_registers_and_invalid_options_are_refused():
    class Good:
        @staticmethod
        @hookimpl
        def register_methods(register):
            register(Method(name="noop", summary="trains nothing new", apply=lambda m, o, c: m,
                            load=lambda p, o, b: b(), options=(Option("k", "int", 1, "a number"),)))

    class Bad:
        @staticmethod
        @hookimpl
        def register_methods(register):
            register(Method(name="twice", summary="repeats an option", apply=None, load=None,
                            options=(Option("k", "int", 1, "a"), Option("k", "int", 2, "b"))))

    found = registry.discover(extra=[("good", Good), ("bad", Bad)])
    assert "noop" in found.methods and "twice" not in found.methods
    bad = next(p for p in found.plugins if p.name == "bad")
    assert "option names repeat" in bad.error


def test_every_hook_is_documented():
    for name in ("register_methods", "register_quantizers", "register_objectives", "register_data_formats"):
        doc = getattr(hookspecs, name).__doc__
        assert ":param register:" in doc and "Example::" in doc
