"""New run says what will run: a method's recommended settings load when it is chosen (unless the person changed
them), and the status line agrees with the data preview."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from .conftest import RECIPES
from .test_tui_app import make_app, open_form, until


def test_every_recommendation_of_a_built_in_method_is_what_its_demo_recipe_trains_with():
    from finetty.core.plugin.registry import load_plugins

    methods = load_plugins().methods
    checked = 0
    for name, method in methods.items():
        recipe_file = RECIPES / f"demo-{name}.yaml"
        if not method.recommended or not recipe_file.is_file():
            continue
        recipe = yaml.safe_load(recipe_file.read_text())
        for key, value in method.recommended.items():
            section, _, setting = key.partition(".")
            assert recipe[section][setting] == value, (name, key)
            checked += 1
    assert methods["prefix"].recommended["train.learning_rate"] == 1e-2
    assert methods["prefix"].recommended["method_options.prefix_projection"] is True
    assert checked >= 10


def test_a_recommended_key_that_names_no_option_is_refused():
    from finetty.core.plugin_api import Method, Option

    with pytest.raises(ValueError, match="recommended key 'method_options.rank'"):
        Method(name="m", summary="s", apply=lambda m, o, c: m, load=lambda p, o, b: None,
               options=(Option("r", "int", 8, "rank"),), recommended={"method_options.rank": 4})
    with pytest.raises(ValueError, match="recommended key 'lr'"):
        Method(name="m", summary="s", apply=lambda m, o, c: m, load=lambda p, o, b: None, recommended={"lr": 1})


def test_choosing_a_method_loads_its_recommended_settings_unless_the_person_changed_them(runs_dir, tmp_path):
    from textual.widgets import Input, Select, Static

    def editor(form, widget_id):
        return form.query_one(f"#{widget_id}-editor")

    async def scenario():
        app = make_app(runs_dir, base_dir=tmp_path, preview=lambda request: {"error": "preview off"})
        async with app.run_test(size=(80, 24)) as pilot:
            form = await open_form(pilot, app)
            await until(pilot, lambda: form.recipe is not None)
            notice = form.query_one("#method-notice", Static)
            assert not notice.display

            form.query_one("#method", Select).value = "prefix"
            await until(pilot, lambda: form.recipe is not None and form.recipe.method == "prefix")
            assert editor(form, "train-learning_rate").value == "0.01"
            assert editor(form, "opt-method-prefix_projection").value is True
            assert editor(form, "opt-method-num_virtual_tokens").value == "16"
            assert form.recipe.train["learning_rate"] == 1e-2
            assert form.recipe.method_options["prefix_projection"] is True
            said = str(notice.render())
            assert notice.display and said.startswith("prefix: learning_rate 0.01") \
                and "prefix_projection true" in said and "from the method's recommendations" in said

            # the person sets a learning rate; switching the method keeps it, and says so
            editor(form, "train-learning_rate").value = "5e-4"
            await until(pilot, lambda: form.recipe is not None and form.recipe.train["learning_rate"] == 5e-4)
            form.query_one("#method", Select).value = "lora"
            await until(pilot, lambda: form.recipe is not None and form.recipe.method == "lora")
            assert editor(form, "train-learning_rate").value == "5e-4"
            assert editor(form, "opt-method-r").value == "16"
            said = str(notice.render())
            assert "kept your learning_rate" in said and "r 16" in said and "learning_rate 0.003" not in said

            # set back to what the form last gave it, it follows the next method again
            editor(form, "train-learning_rate").value = "0.01"
            form.query_one("#method", Select).value = "full"
            await until(pilot, lambda: form.recipe is not None and form.recipe.method == "full")
            assert editor(form, "train-learning_rate").value == "0.001"
            assert isinstance(form.query_one("#train-more", Input).value, str)

    asyncio.run(scenario())


def test_the_status_line_is_a_cross_when_the_preview_says_the_data_cannot_train(runs_dir, tmp_path):
    from textual.widgets import Button, Select, Static

    def preview(request):
        if request["objective"] == "dpo":
            return {"error": "identity.jsonl: is alpaca data (conversation), which objective 'dpo' cannot train on",
                    "refused": True}
        return {"format": "alpaca", "kind": "conversation", "detected": True, "records": 40, "samples": ["hi"],
                "lengths": {"count": 40, "min": 20, "median": 29.5, "max": 39, "over": 0, "max_length": 256,
                            "all": True}}

    async def scenario():
        app = make_app(runs_dir, base_dir=tmp_path, preview=preview)
        async with app.run_test(size=(80, 24)) as pilot:
            form = await open_form(pilot, app)
            status = form.query_one("#form-status", Static)
            await until(pilot, lambda: str(status.render()).startswith("✓")
                        and "records" in str(form.query_one("#preview-text", Static).render()))

            form.query_one("#objective", Select).value = "dpo"
            await until(pilot, lambda: "cannot train" in str(status.render()), what="the status to take the "
                                                                                      "preview's refusal")
            assert str(status.render()).startswith("✗ data:")
            assert form.recipe is None and form.query_one("#launch", Button).disabled
            # another field changes: the check passes again, and the status still says the data cannot train
            form.query_one("#train-max_steps-editor").value = "60"
            await pilot.pause(0.6)
            await until(pilot, lambda: not form.workers or all(w.is_finished for w in form.workers))
            assert str(status.render()).startswith("✗ data:") and form.recipe is None
            await pilot.press("ctrl+l")
            assert app.screen is form  # nothing launched

            form.query_one("#objective", Select).value = "sft"
            await until(pilot, lambda: str(status.render()).startswith("✓") and form.recipe is not None)
            assert not form.query_one("#launch", Button).disabled

    asyncio.run(scenario())


def test_a_picker_opens_as_a_modal_and_enter_chooses(runs_dir, tmp_path):
    """Enter on the method field opens the choices in a bordered modal over the form (the footer and buttons are
    not drawn over); arrows and Enter choose, Escape keeps the current choice."""
    from textual.widgets import OptionList

    from finetty.tui.widgets.picker import PickerScreen

    async def scenario():
        app = make_app(runs_dir, base_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            form = await open_form(pilot, app)
            await until(pilot, lambda: form.recipe is not None)
            method = form.query_one("#method")
            method.focus()
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, PickerScreen))
            options = app.screen.query_one(OptionList)
            labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
            assert labels == method.full_labels and labels[options.highlighted].startswith("lora  (")
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is form)
            assert method.value == "lora"
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, PickerScreen))
            wanted = next(i for i, label in enumerate(labels) if label.startswith("full  ("))
            app.screen.query_one(OptionList).highlighted = wanted
            await pilot.press("enter")
            await until(pilot, lambda: app.screen is form and form.recipe is not None and form.recipe.method == "full")
            assert method.has_focus and form.recipe.train["learning_rate"] == 1e-3

    asyncio.run(scenario())


def test_a_recipe_opened_in_the_form_keeps_the_keys_it_has_no_field_for(runs_dir, tmp_path):
    """chat_template, data_options, monitor and notify have no field: the form says it keeps them, checks them
    with the rest, and the recipe it saves holds them unchanged."""
    from textual.widgets import Input, Static

    from finetty.tui.screens.new_run import STARTER, NewRunScreen, PromptScreen

    extra = {"chat_template": "chatml", "data_options": {"fill": False},
             "monitor": {"watermark": 0.8, "on_watermark": "checkpoint"}, "notify": ["ntfy://finetty-test"]}

    async def scenario():
        app = make_app(runs_dir, base_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            app.new_run({**STARTER, **extra})
            await until(pilot, lambda: isinstance(app.screen, NewRunScreen) and app.screen.recipe is not None)
            form = app.screen
            line = form.query_one("#form-extra", Static)
            assert line.display and str(line.render()) == ("also from the recipe: chat_template, "
                                                           "data_options, monitor, notify")
            assert line.size.height == 1  # whole at 80 columns
            assert form.recipe.chat_template == "chatml" and form.recipe.data_options == {"fill": False}
            assert form.recipe.monitor["on_watermark"] == "checkpoint"
            assert form.recipe.monitor["watermark"] == 0.8 and len(form.recipe.notify) == 1
            await pilot.press("ctrl+s")
            await until(pilot, lambda: isinstance(app.screen, PromptScreen))
            app.screen.query_one("#prompt-input", Input).value = "kept.yaml"
            await pilot.press("enter")
            await until(pilot, lambda: (tmp_path / "kept.yaml").is_file())
            saved = yaml.safe_load((tmp_path / "kept.yaml").read_text())
            for key, value in extra.items():
                assert saved[key] == value, key
            assert saved["method_options"].items() >= STARTER["method_options"].items()

    asyncio.run(scenario())


def test_an_option_the_recipes_method_does_not_declare_is_refused_not_dropped(runs_dir, tmp_path):
    from textual.widgets import Button, Static

    from finetty.tui.screens.new_run import STARTER, NewRunScreen

    async def scenario():
        app = make_app(runs_dir, base_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            app.new_run({**STARTER, "method_options": {**STARTER["method_options"], "rank": 4}})
            await until(pilot, lambda: isinstance(app.screen, NewRunScreen) and app.screen.problem is not None)
            form = app.screen
            assert "method_options.rank has no field" in str(form.query_one("#form-status", Static).render())
            assert form.recipe is None and form.query_one("#launch", Button).disabled

    asyncio.run(scenario())


def test_the_cache_scan_runs_off_the_main_loop_and_fills_the_pickers_after(runs_dir, tmp_path, monkeypatch):
    """A slow scan (held on an Event) leaves the form usable: the pickers say scanning…, a key moves the focus,
    the form validates; when the scan ends the dataset picker offers what it found."""
    import threading

    from textual.widgets import Static

    from finetty.tui.screens import new_run

    release = threading.Event()

    def slow_files(folder):
        assert release.wait(30), "the test never released the scan"
        return ["slow.jsonl"]

    monkeypatch.setattr(new_run, "local_data_files", slow_files)

    async def scenario():
        app = make_app(runs_dir, base_dir=tmp_path)
        async with app.run_test(size=(80, 24)) as pilot:
            try:
                form = await open_form(pilot, app)
                scanning = form.query_one("#dataset-scanning", Static)
                await until(pilot, lambda: form.recipe is not None, what="the form to validate while scanning")
                assert scanning.display and str(scanning.render()) == "scanning…"
                before = app.focused
                await pilot.press("tab")
                assert app.focused is not before
                dataset = form.query_one("#dataset")
                assert not any(label.startswith("slow.jsonl") for label in dataset.full_labels)
            finally:
                release.set()
            await until(pilot, lambda: not scanning.display, what="the scan to end")
            assert "slow.jsonl  (file here)" in dataset.full_labels and dataset.value == "identity"
            assert not form.query_one("#model-scanning").display

    asyncio.run(scenario())
