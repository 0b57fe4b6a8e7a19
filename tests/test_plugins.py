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
    text = " ".join(out.stdout.split())  # (rich wraps long lines)
    assert "such as [q_proj, v_proj]" in text and "[one of: none, all, lora_only]" in text  # text, not markup


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


def test_a_plugin_that_registers_some_components_and_fails_on_others_is_partial(tmp_path):
    site = tmp_path / "site"
    install_fake_distribution(site, "finetty-half", {"half_plugin": """
        from finetty.core.plugin_api import Method, hookimpl
        @hookimpl
        def register_methods(register):
            register(Method(name="fine", summary="works", apply=lambda m, o, c: m, load=lambda p, o, b: b()))
            register(Method(name="unfinished", summary="forgot its apply", apply=None, load=lambda p, o, b: b()))
    """}, {"half": "half_plugin"})
    out = finetty("plugins", env={"PYTHONPATH": str(site), "FINETTY_LOAD_PLUGINS": own_plugin_names() + ",half"})
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("half "))
    assert "fine" in row and "partial" in row and "failed" not in row
    text = " ".join(out.stdout.split())
    assert "method 'unfinished': apply must be a function, not None" in text


def test_required_functions_are_checked_at_registration_naming_the_plugin():
    from finetty.core.plugin_api import DataFormat, Objective, Quantizer

    class Careless:
        @staticmethod
        @hookimpl
        def register_quantizers(register):
            register(Quantizer(name="nothing", summary="neither config nor quantize"))

        @staticmethod
        @hookimpl
        def register_objectives(register):
            register(Objective(name="lossless", summary="no trainer", accepts=("text",), build_trainer="sft"))

        @staticmethod
        @hookimpl
        def register_data_formats(register):
            register(DataFormat(name="raw", summary="no convert", kind="text", detect=lambda r: True,
                                convert=None))

    found = registry.discover(extra=[("careless", Careless)])
    careless = next(p for p in found.plugins if p.name == "careless")
    assert careless.state == "failed" and not careless.provides
    for problem in ("quantizer 'nothing': config or quantize must be a function",
                    "objective 'lossless': build_trainer must be a function, not 'sft'",
                    "data format 'raw': convert must be a function"):
        assert problem in careless.error
    assert "nothing" not in found.quantizers and "lossless" not in found.objectives


def test_a_hook_is_given_only_the_arguments_it_declares():
    from finetty.core.plugin_api import API_VERSION

    class Versioned:
        @staticmethod
        @hookimpl
        def register_methods(register, api_version):
            register(Method(name="versioned", summary=f"written for API {api_version}", apply=lambda m, o, c: m,
                            load=lambda p, o, b: b()))

    class Plain:
        @staticmethod
        @hookimpl
        def register_methods(register):
            register(Method(name="plain", summary="takes register only", apply=lambda m, o, c: m,
                            load=lambda p, o, b: b()))

    found = registry.discover(extra=[("versioned", Versioned), ("plain", Plain)])
    assert found.methods["versioned"].summary == f"written for API {API_VERSION}"
    assert "plain" in found.methods


def test_a_quantizer_says_which_method_kinds_train_on_it(tmp_path):
    from finetty.core.errors import InputError
    from finetty.core.plugin_api import Quantizer
    from finetty.core.recipe import recipe as recipe_mod

    class Adapters:
        @staticmethod
        @hookimpl
        def register_quantizers(register):
            register(Quantizer(name="frozen", summary="any adapter", quantize=lambda m, o, d: m, supports=("peft",)))

    found = registry.discover(extra=[("adapters", Adapters)])
    path = tmp_path / "r.yaml"
    for method in ("lora", "dora", "ia3", "prefix"):  # PEFT methods: none names the quantizer
        path.write_text(f"method: {method}\nquantizer: frozen\n")
        assert recipe_mod.load(path, [], found, check_data=False, check_sources=False).quantizer == "frozen"
    path.write_text("method: adapter\nquantizer: frozen\n")
    with pytest.raises(InputError) as refused:
        recipe_mod.load(path, [], found, check_data=False, check_sources=False)
    message = str(refused.value)
    assert "quantizer 'frozen' supports peft methods, and 'adapter' is a modules method" in message
    assert "use quantizer: none with 'adapter'" in message and "lora" in message
    with pytest.raises(ValueError, match="not method kinds"):
        Quantizer(name="odd", summary="a kind that does not exist", quantize=lambda m, o, d: m,
                  supports=("adapters",))  # type: ignore[arg-type]


def test_docs_api_reference_is_the_one_the_code_generates():
    from finetty.core import plugin_api
    from finetty.core.plugin import reference

    docs = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert reference.START in docs and reference.END in docs
    written = docs[docs.index(reference.START):docs.index(reference.END) + len(reference.END)]
    assert written == reference.reference(), ("docs/plugins.md's API reference is out of date: run "
                                              "python -m finetty.core.plugin.reference --write docs/plugins.md")
    for cls in reference.DESCRIPTORS + reference.FUNCTION_TYPES:  # everything listed is the plugins' to import
        assert getattr(plugin_api, cls.__name__) is cls
