"""The finetty terminal app: ``finetty`` with no arguments.

It is one client of the engine: it reads run directories and starts detached
workers through ``finetty.core``; closing it never stops a run. Nothing here
imports torch, transformers, peft, bitsandbytes or datasets.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from finetty.core import paths
from finetty.core.text import clean, one_line

from .history import RunsTracker
from .notify import Notifier
from .settings import Settings


#: the screens' modules, imported after the first frame (:meth:`FinettyApp.discover`)
SCREEN_MODULES = ("new_run", "monitor", "help", "gpu", "plugins", "chat", "results")


class FinettyApp(App):
    """Runs, New run, Run monitor, Plugins, Help; the command palette lists every binding."""

    CSS_PATH = "app.tcss"
    TITLE = "finetty"
    BINDINGS = [
        Binding("f1,question_mark", "help", "Help", id="app.help"),
        Binding("ctrl+q", "quit", "Quit", id="app.quit", priority=True),
        Binding("f2", "plugins", "Plugins", id="app.plugins", show=False),
        Binding("f3", "toggle_notifications", "Notifications on/off", id="app.notifications", show=False),
    ]

    def __init__(self, runs: Path | None = None, registry=None, clock: Callable[[], float] = time.time,
                 settings: Settings | None = None, notify_write: Callable[[str], None] | None = None,
                 first_run: bool | None = None, poll_interval: float = 1.0, open_run: Path | None = None,
                 base_dir: Path | None = None, preview: Callable[[dict], dict] | None = None, nvml_lib=None):
        self.settings = settings or Settings.load()
        super().__init__()
        self.runs = Path(runs) if runs else paths.runs_dir()
        self._plugins = registry
        self.clock = clock
        self.poll_interval = poll_interval
        self.first_run = first_run
        self.open_run = open_run
        self.base_dir = Path(base_dir) if base_dir else Path.cwd()
        self.preview = preview
        """computes the New run screen's dataset preview (default: a child process, see finetty.tui.preview)"""
        self.nvml_lib = nvml_lib
        """a pynvml stand-in for the GPU view and the monitor's process tables (tests), or None for nvidia-ml-py"""
        self._plugins_lock = threading.Lock()
        self.tracker = RunsTracker(self.runs, since=clock() - 5)
        self.queue_state = None
        self.notifier = Notifier(notify_write or self._write_terminal, self.settings)
        if self.settings.keys:
            self.set_keymap(self.settings.keys)

    # -- data the screens share ---------------------------------------------------------------------

    @property
    def registry(self):
        """The plugins, discovered once, on first use (from any thread: one discovery, the others wait for it).

        Discovery imports no torch but every plugin module, a tenth of a second or more: the app starts it in
        a worker after its first frame (:meth:`discover`), and a screen that needs it reads it off the loop."""
        if self._plugins is None:
            with self._plugins_lock:
                if self._plugins is None:
                    from finetty.core.plugin.registry import load_plugins

                    self._plugins = load_plugins()
        return self._plugins

    @property
    def plugins_ready(self) -> bool:
        """Whether :attr:`registry` answers at once (a screen composed on the event loop may read it)."""
        return self._plugins is not None

    def on_mount(self) -> None:
        from .screens.runs import RunsScreen

        self.refresh_runs()
        self.set_interval(self.poll_interval, self.refresh_runs)
        # the first frame is one screen's: the monitor of ``open_run``, a newcomer's New run, or Runs (which the
        # other two compose only when they are left, see action_back)
        if self.open_run is not None:
            self.open_monitor(self.open_run)
        elif self.first_run or (self.first_run is None and not self._has_runs()):
            self.new_run()
        else:
            self.push_screen(RunsScreen())
        self.call_after_refresh(self.discover)  # the first frame first; then the plugins, in a thread

    @work(thread=True, exclusive=True, exit_on_error=False, group="discover")
    def discover(self) -> None:
        """Discover the plugins off the event loop, so New run and Plugins find them ready; then import the
        screens a key opens, so that key's first frame waits for none of their imports (New run's alone,
        which Help reads its key names from, is a tenth of a second)."""
        self.registry
        import importlib

        for name in SCREEN_MODULES:
            try:
                importlib.import_module(f"{__package__}.screens.{name}")
            except ImportError:  # (chat without its extras: the screen says so when it is asked for)
                pass

    @work(thread=True, exclusive=True, exit_on_error=False, group="standby")
    def warm_standby(self) -> None:
        """Have a standby worker importing torch & co. while the person fills in the New run form.

        In a thread: starting it is a fork and an exec, which the New run screen's first frame does not wait for."""
        from finetty.core.run import standby

        if standby.enabled():
            standby.ensure()

    @work(thread=True, exclusive=True, exit_on_error=False, group="request")
    def request(self, run_dir: Path, what: str) -> None:
        """Ask ``run_dir``'s worker to ``stop`` (checkpoint first) or ``checkpoint`` now, or ``resume`` the run."""
        from finetty.core.run import launch
        from finetty.core.errors import InputError, RunBusyError

        try:
            if what == "stop":
                message = f"asked worker {launch.request_stop(run_dir)} to save a checkpoint and stop"
            elif what == "checkpoint":
                message = f"asked worker {launch.request_checkpoint(run_dir)} to save a checkpoint now"
            else:
                launch.start_worker(run_dir, resume=True)
                message = f"resuming {run_dir.name}"
        except (InputError, RunBusyError, OSError) as exc:
            self.call_from_thread(self.notify, str(exc), severity="error")
            return
        self.call_from_thread(self.notify, message)
        if what == "resume":
            self.call_from_thread(self.refresh_runs)

    def _has_runs(self) -> bool:
        from finetty.core.run.rundir import RECIPE_FILE

        return self.runs.is_dir() and any((p / RECIPE_FILE).is_file() for p in self.runs.iterdir())

    @work(thread=True, exclusive=True, exit_on_error=False, group="runs")
    def refresh_runs(self) -> None:
        if not self.tracker.busy.acquire(blocking=False):
            return  # the last refresh is still reading
        try:
            batch = self.tracker.read()
            self.call_from_thread(self._apply_runs, batch)
        finally:
            self.tracker.busy.release()

    def _apply_runs(self, batch) -> None:
        for run_id, event in self.tracker.apply(batch):
            self.announce(run_id, event)
        self.queue_state = batch.queue
        from .screens.runs import RunsScreen

        for screen in self.screen_stack:
            if isinstance(screen, RunsScreen):
                screen.show(self.tracker.ordered(), batch.queue)

    def announce(self, run_id: str, event: dict) -> None:
        """A run ended or crossed the memory watermark: a toast, the bell and a desktop notification."""
        kind = event.get("type")
        if kind == "run_finished":
            title, body, severity = "finetty: run finished", f"{run_id} finished at step {event.get('step')}", "information"
        elif kind == "run_failed":
            title, body, severity = "finetty: run failed", f"{run_id}: {event.get('reason')}", "error"
        elif kind == "stopped":
            title, body, severity = "finetty: run stopped", f"{run_id} stopped at step {event.get('step')}", "warning"
        else:
            fraction = event.get("fraction")
            title = "finetty: memory watermark crossed"
            body = (f"{run_id}: GPU {event.get('gpu')} at {fraction:.0%}" if isinstance(fraction, (int, float))
                    else f"{run_id}: GPU {event.get('gpu')}") + f" (watermark {event.get('watermark')}, " \
                                                               f"policy {event.get('policy')})"
            severity = "warning"
        self.notify(body, title=title.removeprefix("finetty: ").capitalize(), severity=severity)
        self.notifier(title, body)

    def notify(self, message: str, *, title: str = "", severity="information", timeout: float | None = None,
               markup: bool = False) -> None:
        """Every toast of the app (screens' and widgets' too): cleaned of control characters, never markup.

        Toasts carry run ids, paths and failure reasons (data), and ``Widget.notify`` passes ``markup=True``
        on; no toast of finetty's uses markup, so it is never read as such."""
        super().notify(clean(message), title=one_line(title), severity=severity, timeout=timeout, markup=False)

    def _write_terminal(self, text: str) -> None:
        if not self.is_headless and self._driver is not None:
            self._driver.write(text)

    # -- navigation -----------------------------------------------------------------------------------

    def new_run(self, recipe: dict | None = None) -> None:
        """Open New run: its first frame at once, the form when the plugins and the GPUs have been read."""
        from .screens.loading import LoadingScreen
        from .screens.new_run import NewRunScreen

        def prepare() -> None:
            self.registry
            NewRunScreen._gpus()  # (cached for a while: the form's compose then reads it at once)

        self.push_screen(LoadingScreen("new run", "the plugins and the GPUs", prepare,
                                       lambda: NewRunScreen(recipe, base_dir=self.base_dir)))

    def action_back(self) -> None:
        """Leave the current screen: to the one under it, or to Runs where the app was opened on a run or on
        a newcomer's New run (Runs is composed then, not before the first frame)."""
        from .screens.runs import RunsScreen

        if len(self.screen_stack) > 2:
            self.pop_screen()
        else:
            self.switch_screen(RunsScreen())

    def open_monitor(self, run_dir: Path) -> None:
        from .screens.monitor import MonitorScreen

        self.push_screen(MonitorScreen(Path(run_dir)))

    def open_chat(self, run_dir: Path, checkpoint: str | None = None) -> None:
        try:
            from .screens.chat import ChatScreen
        except ImportError as exc:
            self.notify(f"chat is not available in this install ({exc})", severity="error")
            return
        self.push_screen(ChatScreen(Path(run_dir), checkpoint))

    def open_results(self, run_dir: Path, checkpoint: str | None = None) -> None:
        from .screens.results import ResultsScreen

        self.push_screen(ResultsScreen(Path(run_dir), checkpoint))

    def action_help(self) -> None:
        from .screens.help import HelpScreen

        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def action_gpus(self) -> None:
        from .screens.gpu import GpuScreen

        if not isinstance(self.screen, GpuScreen):
            self.push_screen(GpuScreen(self.nvml_lib))

    def action_plugins(self) -> None:
        from .screens.loading import LoadingScreen
        from .screens.plugins import PluginsScreen

        if isinstance(self.screen, PluginsScreen):
            return
        if self.plugins_ready:
            self.push_screen(PluginsScreen())
        else:
            self.push_screen(LoadingScreen("plugins", "the plugins", lambda: self.registry, PluginsScreen))

    def action_toggle_notifications(self) -> None:
        self.settings.notifications = not self.settings.notifications
        self.settings.save()
        self.notify(f"terminal notifications {'on' if self.settings.notifications else 'off'}")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Every binding of the current screen, then Textual's own commands."""
        seen = set()
        for key, active in screen.active_bindings.items():
            binding = active.binding
            if not binding.id or not binding.description or binding.action in seen:
                continue
            seen.add(binding.action)
            node = active.node

            def run(action=binding.action, node=node):
                self.call_later(self.run_action, action, node)

            yield SystemCommand(binding.description, f"{binding.tooltip or binding.description} "
                                f"(key: {self.get_key_display(binding)})", run)
        yield from super().get_system_commands(screen)


def run_app(runs: Path | None = None, open_run: Path | None = None) -> int:
    FinettyApp(runs=runs, open_run=open_run).run()
    return 0
