"""The TUI chat screen, driven with Pilot: answers stream from the model's child process, base and tuned side by
side, stop, clear, switching checkpoints, and what is typed while the model loads."""

from __future__ import annotations

import asyncio
import time

from textual.app import App
from textual.widgets import Input, Select

from finetty.tui.screens.chat import ChatScreen
from finetty.tui.widgets.chat_pane import ChatPane

from .results_runs import IDENTITY


class ChatApp(App):
    def __init__(self, run_dir, checkpoint=None):
        super().__init__()
        self.run_dir, self.checkpoint = run_dir, checkpoint

    def on_mount(self) -> None:
        self.push_screen(ChatScreen(self.run_dir, self.checkpoint))


async def settle(pilot, until, timeout: float = 120.0) -> None:
    """Let workers and their messages run until ``until()`` holds (a cross-thread wait with a deadline)."""
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the chat screen did not get there in time"
        await pilot.pause(0.05)


def panes(app):
    return app.screen.query_one("#pane-base", ChatPane), app.screen.query_one("#pane-tuned", ChatPane)


async def ask(pilot, text: str) -> None:
    pilot.app.screen.query_one("#chat-input", Input).focus()
    await pilot.press(*text, "enter")


def test_compare_base_and_tuned_side_by_side(identity_run):
    asyncio.run(_compare_base_and_tuned_side_by_side(identity_run))


async def _compare_base_and_tuned_side_by_side(identity_run):
    app = ChatApp(identity_run)
    async with app.run_test(size=(140, 40)) as pilot:
        screen = app.screen
        await settle(pilot, lambda: "tuned" in screen.models)
        assert str(screen.query_one("#chat-status").render()) == "ready"
        await pilot.press("ctrl+b")  # compare: the base loads in a worker
        await settle(pilot, lambda: "base" in screen.models)
        screen.query_one("#chat-temperature", Input).value = "0"
        screen.query_one("#chat-max-new-tokens", Input).value = "24"
        await ask(pilot, "Who are you?")
        await settle(pilot, lambda: not screen.generations)

        base, tuned = panes(app)
        assert base.display and tuned.display
        assert base.region.width > 20 and tuned.region.width > 20 and base.region.height > 5
        assert base.region.y == tuned.region.y and base.region.right <= tuned.region.x, "side by side"
        assert not screen.loading, "the screen is not hidden behind a loading indicator"
        assert [m.role for m in tuned.messages] == ["user", "assistant"]
        assert tuned.messages[1].text == IDENTITY[0][1]
        assert base.messages[0].text == "Who are you?" and base.messages[1].text
        assert IDENTITY[0][1] not in base.messages[1].text
        assert tuned.border_title == "tuned · final"

        await ask(pilot, "Who made you?")  # a second turn: each model keeps its own conversation
        await settle(pilot, lambda: not screen.generations)
        assert tuned.messages[3].text == IDENTITY[2][1]
        assert [m["role"] for m in screen.histories["base"]] == ["user", "assistant"] * 2

        await pilot.press("ctrl+l")
        await pilot.pause()
        assert tuned.messages == [] and base.messages == [] and screen.histories["tuned"] == []


def test_stop_ends_a_streaming_answer_without_freezing_the_ui(identity_run):
    asyncio.run(_stop_ends_a_streaming_answer_without_freezing_the_ui(identity_run))


async def _stop_ends_a_streaming_answer_without_freezing_the_ui(identity_run):
    app = ChatApp(identity_run)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await pilot.press("ctrl+b")
        await settle(pilot, lambda: "tuned" in screen.models and "base" in screen.models)
        screen.query_one("#chat-temperature", Input).value = "0"
        screen.query_one("#chat-max-new-tokens", Input).value = "4000"  # the random base never ends its turn
        await ask(pilot, "Who are you?")
        base, tuned = panes(app)
        await settle(pilot, lambda: len(base.messages) == 2 and len(base.messages[1].text) > 0)
        assert "base" in screen.generations, "still streaming while the UI answers keys"
        await pilot.press("escape")
        await settle(pilot, lambda: not screen.generations)
        assert base.messages[1].text.endswith("[stopped]")
        # escape stops both answers: the tuned one is whole or cut short, but always the trained answer
        assert IDENTITY[0][1].startswith(tuned.messages[1].text.removesuffix(" [stopped]").strip())
        assert app.screen is screen, "escape stopped the answer; it did not leave the screen"


def test_switching_checkpoint_reloads_the_tuned_model(identity_run):
    asyncio.run(_switching_checkpoint_reloads_the_tuned_model(identity_run))


async def _switching_checkpoint_reloads_the_tuned_model(identity_run):
    app = ChatApp(identity_run, checkpoint="40")
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        await settle(pilot, lambda: "tuned" in screen.models)
        assert screen.models["tuned"].label == "step-000040"
        select = screen.query_one("#chat-checkpoint", Select)
        assert select.value == "step-000040"
        select.value = "step-000020"
        await settle(pilot, lambda: "tuned" in screen.models and screen.models["tuned"].label == "step-000020")
        base, tuned = panes(app)
        assert tuned.border_title == "tuned · step-000020"
        assert tuned.messages[-1].text == "switched to step-000020"
        assert not base.display


def test_a_message_sent_while_the_model_loads_is_answered_when_it_is_ready(identity_run):
    asyncio.run(_a_message_sent_while_the_model_loads_is_answered_when_it_is_ready(identity_run))


async def _a_message_sent_while_the_model_loads_is_answered_when_it_is_ready(identity_run):
    app = ChatApp(identity_run)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        screen.query_one("#chat-temperature", Input).value = "0"
        screen.query_one("#chat-max-new-tokens", Input).value = "24"
        await ask(pilot, "Who are you?")
        assert "tuned" in screen.loading_models, "the child process cannot have loaded the model yet"
        assert screen.waiting and "1 message sent when ready" in str(screen.query_one("#chat-status").render())
        assert screen.query_one("#chat-input", Input).value == "", "the message left the input: it is kept"
        await settle(pilot, lambda: "tuned" in screen.models and not screen.generations and not screen.waiting)
        _, tuned = panes(app)
        assert [m.role for m in tuned.messages] == ["note", "user", "assistant"]
        assert tuned.messages[0].text == "waiting for the model to load: Who are you?"
        assert tuned.messages[2].text == IDENTITY[0][1], "answered by the tuned model once it was ready"


def test_importing_the_chat_screen_imports_no_torch():
    import subprocess
    import sys

    code = ("import sys; import finetty.tui.screens.chat; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
