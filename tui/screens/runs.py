"""Runs (home): every run of the runs directory, live, and the queue."""

from __future__ import annotations

import shutil
import time

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from finetty.core.run import rundir
from finetty.core.run.follow import download_line
from finetty.core.text import as_markup, as_text, clean, one_line

from .confirm import ConfirmScreen
from .format import duration, status_text

#: The table's columns, left to right.
COLUMNS = ("run", "status", "model", "method", "step", "loss", "elapsed", "ETA")
#: Which columns stay when the table is narrower than its cells, first kept first: a column that does not fit
#: whole is left out (its facts are on the detail line below the table), never cut (`finishe`, `120/12`).
PRIORITY = ("run", "status", "step", "loss", "method", "ETA", "elapsed", "model")
#: a model's name longer than this ends in … (its full name is on the detail line)
MODEL_WIDTH = 32


def _ellipsis(name: str, most: int) -> str:
    """A name in at most ``most`` characters, ending in … when it was longer (never silently cut)."""
    return name if len(name) <= most else name[:most - 1] + "…"


class RunsScreen(Screen):
    """The list of runs; Enter opens one."""

    CSS_PATH = "runs.tcss"
    SUB_TITLE = "runs"
    BINDINGS = [
        Binding("n", "new", "New", id="runs.new"),
        # The footer shows what fits whole at 80 columns (compact, without the palette's ^p, which F1 names):
        # o (Enter opens a run too) and d (asks first) are left out of it; F1 and the palette list them.
        Binding("o", "open", "Open", id="runs.open", tooltip="open the highlighted run's monitor (or Enter)",
                show=False),
        Binding("s", "stop", "Stop", id="runs.stop", tooltip="checkpoint, then stop the highlighted run"),
        Binding("r", "resume", "Resume", id="runs.resume", tooltip="continue from the newest complete checkpoint"),
        Binding("d", "delete", "Delete", id="runs.delete", tooltip="delete the run's directory (asks first)",
                show=False),
        Binding("c", "chat", "Chat", id="runs.chat", tooltip="chat with the run's result or newest checkpoint"),
        Binding("t", "results", "Results", id="runs.results", tooltip="eval, export and serve the run's result"),
        Binding("p", "app.plugins", "Plugins", id="runs.plugins"),
        Binding("g", "app.gpus", "GPUs", id="runs.gpus", tooltip="every GPU here: memory, processes, runs on it"),
        Binding("left_square_bracket", "queue_move(-1)", "Queue: earlier", id="runs.queue_up", show=False),
        Binding("right_square_bracket", "queue_move(1)", "Queue: later", id="runs.queue_down", show=False),
        Binding("x", "queue_remove", "Queue: remove", id="runs.queue_remove", show=False),
        Binding("X", "queue_clear", "Queue: clear", id="runs.queue_clear", show=False),
        Binding("q", "app.quit", "Quit", id="runs.quit", show=False),
    ]

    def __init__(self):
        super().__init__()
        self.runs: list[rundir.RunSummary] = []
        self.queue = None
        self._keys: list[str] = []
        self._columns: tuple[str, ...] = ()

    def compose(self) -> ComposeResult:
        yield Header()
        with Vertical(id="runs-body"):
            yield DataTable(id="runs-table", cursor_type="row", zebra_stripes=True)
            yield Static("No runs yet: press [b]n[/b] for a new run (the tiny demo trains on any CPU).",
                         id="runs-empty")
            with Vertical(id="queue-box"):
                yield Static(id="queue-title")
                yield DataTable(id="queue-table", cursor_type="row", show_header=False)
            yield Static(id="run-detail")
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self.query_one("#queue-box").display = False
        app = self.app
        self.show(app.tracker.ordered(), app.queue_state)

    def on_resize(self) -> None:
        self.show(self.runs, self.queue)

    # -- data in ------------------------------------------------------------------------------------

    def _cells(self, run: rundir.RunSummary) -> dict[str, Text | str]:
        """Every column's cell for ``run``, whole."""
        now = self.app.clock()
        elapsed = None
        if run.started is not None:
            end = now if run.status in ("running", "starting") else (run.updated or run.started)
            elapsed = max(0.0, end - run.started)
        eta = run.eta
        step = f"{run.step}/{run.total}" if run.total else str(run.step or "-")
        loss = f"{run.loss:.3f}" if run.loss is not None else "-"
        model = _ellipsis(one_line(run.model.rsplit("/", 1)[-1]), MODEL_WIDTH)
        return {"run": as_text(run.id, one_line=True), "status": status_text(run.status, one_line(run.label)),
                "model": Text(model), "method": as_text(rundir.what_runs(run.method, run.extra.get("objective")),
                                                        one_line=True),
                "step": step, "loss": loss, "elapsed": duration(elapsed), "ETA": duration(eta)}

    def _fitting(self, cells: list[dict]) -> tuple[str, ...]:
        """The columns that fit whole in the screen's width, by :data:`PRIORITY`, in table order."""
        room = self.size.width - 2  # (the vertical scrollbar)
        kept: set[str] = set()
        for name in PRIORITY:
            width = max([len(name)] + [Text(c[name]).cell_len if isinstance(c[name], str) else c[name].cell_len
                                       for c in cells]) + 2  # (a cell's padding)
            if width <= room:
                kept.add(name)
                room -= width
        return tuple(name for name in COLUMNS if name in kept)

    def show(self, runs: list[rundir.RunSummary], queue) -> None:
        self.runs, self.queue = runs, queue
        table = self.query_one("#runs-table", DataTable)
        cells = [self._cells(run) for run in runs]
        columns = self._fitting(cells)
        if columns != self._columns:
            self._columns = columns
            table.clear(columns=True)
            self._keys = []
            for name in columns:
                table.add_column(name, key=name)
        keys = [run.id for run in runs]
        rows = [[c[name] for name in columns] for c in cells]
        if keys == self._keys:
            columns = list(table.columns)
            for key, row in zip(keys, rows):
                for column, value in zip(columns, row):
                    if table.get_cell(key, column) != value:
                        table.update_cell(key, column, value)
        else:
            current = self._current_key()
            table.clear()
            for key, row in zip(keys, rows):
                table.add_row(*row, key=key)
            self._keys = keys
            if current in keys:
                table.move_cursor(row=keys.index(current))
        self.query_one("#runs-empty").display = not runs
        table.display = bool(runs)
        self._show_queue(queue)
        self._show_detail()

    def _show_queue(self, queue) -> None:
        box = self.query_one("#queue-box")
        entries = queue.entries if queue is not None else []
        box.display = bool(entries) or bool(queue and queue.last_error)
        if not box.display:
            return
        title = Text(f"Queue: {len(entries)} waiting, each starts when nothing else trains  ", style="bold")
        title.append("[ ] reorder · x remove · X clear", style="dim")
        if queue.last_error:
            title.append(f"\n{clean(queue.last_error)}", style="red")
        self.query_one("#queue-title", Static).update(title)
        table = self.query_one("#queue-table", DataTable)
        if not table.columns:
            for name in ("#", "id", "method/objective", "model", "dataset"):
                table.add_column(name, key=name)
        current = None
        if table.row_count and table.cursor_row is not None and table.cursor_row < table.row_count:
            current = table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value
        table.clear()
        for number, entry in enumerate(entries, 1):
            table.add_row(str(number), as_text(entry.id, one_line=True),
                          as_text(rundir.what_runs(entry.method, entry.objective), one_line=True),
                          as_text(_ellipsis(entry.model.rsplit("/", 1)[-1], 20), one_line=True),
                          as_text(_ellipsis(entry.dataset.rsplit("/", 1)[-1], 20), one_line=True), key=entry.id)
        ids = [e.id for e in entries]
        if current in ids:
            table.move_cursor(row=ids.index(current))

    def _current_key(self) -> str | None:
        table = self.query_one("#runs-table", DataTable)
        if not table.row_count:
            return None
        return table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value

    def selected(self) -> rundir.RunSummary | None:
        key = self._current_key()
        return next((run for run in self.runs if run.id == key), None)

    def _show_detail(self) -> None:
        run = self.selected()
        detail = self.query_one("#run-detail", Static)
        if run is None:
            detail.update("")
            return
        text = Text()
        text.append(one_line(run.origin if run.parent else run.model), style="bold")  # (a parent: ← its id)
        text.append(f" · {one_line(rundir.what_runs(run.method, run.extra.get('objective')))} · "
                    f"{run.checkpoints} checkpoint(s)")
        if "elapsed" not in self._columns:  # (a column left out at this width: its fact is here)
            text.append(f" · ran {self._cells(run)['elapsed']}")
        if run.started:
            text.append(f" · started {time.strftime('%Y-%m-%d %H:%M', time.localtime(run.started))}", style="dim")
        for event in run.extra.get("downloads", {}).values():  # (the hub snapshot it trained on)
            text.append(f"\n{one_line(download_line(event))}", style="dim")
        if run.reason and run.status in ("failed", "lost", "stopped"):
            text.append(f"\n{clean(run.reason)}", style="red" if run.status != "stopped" else "yellow")
        if run.status in ("failed", "lost"):
            for line in rundir.log_tail(run.path, 3):
                text.append(f"\n  {one_line(line)[:200]}", style="dim")
        detail.update(text)

    @on(DataTable.RowHighlighted, "#runs-table")
    def _highlighted(self) -> None:
        self._show_detail()

    @on(DataTable.RowSelected, "#runs-table")
    def _selected(self) -> None:
        self.action_open()

    # -- actions ------------------------------------------------------------------------------------

    def _need_run(self) -> rundir.RunSummary | None:
        run = self.selected()
        if run is None:
            self.notify("no run selected: press n for a new run", severity="warning")
        return run

    def action_new(self) -> None:
        self.app.new_run()

    def action_open(self) -> None:
        run = self._need_run()
        if run:
            self.app.open_monitor(run.path)

    def action_chat(self) -> None:
        run = self._need_run()
        if run:
            self.app.open_chat(run.path)

    def action_results(self) -> None:
        run = self._need_run()
        if run:
            self.app.open_results(run.path)

    def action_stop(self) -> None:
        run = self._need_run()
        if run:
            self.app.request(run.path, "stop")

    def action_resume(self) -> None:
        run = self._need_run()
        if run:
            self.app.request(run.path, "resume")

    def action_delete(self) -> None:
        run = self._need_run()
        if run is None:
            return
        if run.status in ("running", "starting"):
            self.notify(f"{as_markup(run.id, one_line=True)} is training: stop it first (s)", severity="warning")
            return

        def answer(yes: bool | None) -> None:
            if yes:
                self._delete(run.path)

        self.app.push_screen(ConfirmScreen(f"Delete run {as_markup(run.id, one_line=True)}?\n"
                                           f"Its checkpoints and result go with it.",
                                           yes="Delete"), answer)

    @work(thread=True, exclusive=True, exit_on_error=False, group="request")
    def _delete(self, run_dir) -> None:
        if rundir.is_live(run_dir):
            self.app.call_from_thread(self.notify, f"{run_dir.name} started training again; not deleted",
                                      severity="error")
            return
        shutil.rmtree(run_dir, ignore_errors=True)
        self.app.call_from_thread(self.notify, f"deleted {run_dir.name}")
        self.app.call_from_thread(self.app.refresh_runs)

    def _queue_entry(self) -> str | None:
        table = self.query_one("#queue-table", DataTable)
        if not table.row_count or not self.query_one("#queue-box").display:
            self.notify("the queue is empty", severity="warning")
            return None
        return table.coordinate_to_cell_key((table.cursor_row, 0)).row_key.value

    def action_queue_move(self, delta: int) -> None:
        entry = self._queue_entry()
        if entry:
            self._queue_op("move", entry, delta)

    def action_queue_remove(self) -> None:
        entry = self._queue_entry()
        if entry:
            self._queue_op("remove", entry)

    def action_queue_clear(self) -> None:
        if self._queue_entry():
            self.app.push_screen(ConfirmScreen("Clear the whole queue?", yes="Clear"),
                                 lambda yes: yes and self._queue_op("clear"))

    @work(thread=True, exclusive=True, exit_on_error=False, group="queue")
    def _queue_op(self, op: str, entry: str | None = None, delta: int = 0) -> None:
        from finetty.core.run import queue

        runs = self.app.runs
        if op == "move":
            queue.move(runs, entry, delta)  # the cursor follows the entry by its id
        elif op == "remove":
            queue.remove(runs, entry)
        else:
            queue.clear(runs)
        self.app.call_from_thread(self.app.refresh_runs)
