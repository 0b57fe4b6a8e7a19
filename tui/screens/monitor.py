"""Run monitor: a run's whole history, then live; attaching is replay then follow."""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Header, OptionList, Static, TabbedContent, TabPane
from textual.widgets.option_list import Option

from finetty.core.run import rundir
from finetty.core.run.follow import download_line
from finetty.core.text import clean, one_line

from ..history import RunFollower
from ..widgets.loss_chart import LossChart
from ..widgets.memory import MemoryGauges

#: seconds between two readings of the GPUs' process tables while the Memory tab is shown
PROCESS_INTERVAL = 2.0
from .format import count, duration, status_text


class MonitorScreen(Screen):
    """Loss chart, rates, memory, checkpoints, log tail and recipe of one run."""

    CSS_PATH = "monitor.tcss"
    SUB_TITLE = "run monitor"
    BINDINGS = [
        Binding("escape,b", "app.back", "Back", id="monitor.back"),
        Binding("s", "stop", "Stop", id="monitor.stop", tooltip="save a checkpoint, then stop the worker"),
        Binding("k", "checkpoint", "Checkpoint now", id="monitor.checkpoint"),
        Binding("c", "chat", "Chat", id="monitor.chat",
                tooltip="chat with the highlighted checkpoint (Checkpoints tab) or the newest one"),
        Binding("t", "results", "Results", id="monitor.results",
                tooltip="eval, export and serve the highlighted checkpoint (Checkpoints tab) or the result"),
        Binding("r", "resume", "Resume", id="monitor.resume", show=False),
        Binding("g", "tab('checkpoints')", "Checkpoints", id="monitor.tab_checkpoints", show=False),
        Binding("l", "tab('log')", "Log", id="monitor.tab_log", show=False),
        Binding("e", "tab('recipe')", "Recipe", id="monitor.tab_recipe", show=False),
        Binding("w", "tab('warnings')", "Warnings", id="monitor.tab_warnings", show=False),
        Binding("m", "tab('memory')", "Memory", id="monitor.tab_memory", show=False,
                tooltip="memory over time per GPU, the watermark and its crossings, and each GPU's processes"),
    ]

    def __init__(self, run_dir: Path, poll_interval: float | None = None):
        super().__init__()
        self.run_dir = Path(run_dir)
        self.follower = RunFollower(self.run_dir)
        self.poll_interval = poll_interval
        self._checkpoints: list[tuple[int, str]] = []
        self._checkpoint_facts: dict[str, tuple[float | None, int]] = {}
        """checkpoint name -> (when it was completed, bytes on disk), read by the poll thread"""
        self._final = False
        self._recipe_text = None
        self._log: list[str] = []
        self._warned = 0
        self._replaying = True
        """until the first read that reaches the end of events.jsonl"""
        self._processes: dict[int, list] | None = None
        """GPU index -> its processes (core.memory.gpu.GpuProcess), read by a thread while the Memory tab shows"""
        self._own_pids: set[int] = set()
        self._memory_busy = self._memory_again = False
        self._tabs_ready = False
        self._tab_wanted = "checkpoints"
        """the tab a key chose (shown when the tabs are mounted, after the first frame)"""

    @property
    def history(self):
        return self.follower.history

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(id="monitor-status")
        with Horizontal(id="monitor-top"):
            yield LossChart(id="loss-chart")
            with VerticalScroll(id="monitor-side"):
                yield Static(id="monitor-stats")
                yield MemoryGauges(id="memory")
        yield Footer(compact=True, show_command_palette=False)  # every key whole at 80 columns (F1 names ^p)

    def _tabs(self) -> TabbedContent:
        """Checkpoints, Log, Recipe, Warnings and Memory: mounted just after the first frame (:meth:`_mount_tabs`),
        which five panes and their tab bar would otherwise delay by a tenth of a second."""
        tabs = TabbedContent(id="monitor-tabs", initial=self._tab_wanted)
        for pane in (TabPane("Checkpoints", OptionList(id="checkpoint-list"), id="checkpoints"),
                     TabPane("Log", Static(id="log-tail"), id="log"),
                     TabPane("Recipe", VerticalScroll(Static(id="recipe-text")), id="recipe"),
                     TabPane("Warnings", Static(id="warning-list"), id="warnings"),
                     TabPane("Memory", VerticalScroll(Static(Text("no memory samples in this run yet", style="dim"),
                                                             id="memory-note"), id="memory-panels"),
                             id="memory-tab")):
            tabs.compose_add_child(pane)
        return tabs

    async def _mount_tabs(self) -> None:
        if not self.is_attached:  # (left before its first frame was drawn)
            return
        await self.mount(self._tabs(), after="#monitor-top")
        self._tabs_ready = True
        self._draw()

    def on_mount(self) -> None:
        self.sub_title = f"run {one_line(self.run_dir.name)}"
        self.call_after_refresh(self._mount_tabs)
        self._draw()
        self.poll()
        interval = self.poll_interval or getattr(self.app, "poll_interval", 1.0) / 2
        self.set_interval(interval, self.poll)
        self.set_interval(PROCESS_INTERVAL, self._refresh_processes)

    # -- reading: a worker thread reads; the event loop folds and draws ---------------------------------

    @work(thread=True, exclusive=True, exit_on_error=False, group="follow")
    def poll(self) -> None:
        if not self.follower.busy.acquire(blocking=False):
            return  # the last poll is still replaying a long history; it reads on to the end
        try:
            while True:
                batch = self.follower.read()
                for _, name in batch["checkpoints"]:  # (a complete checkpoint never changes: read once)
                    if name not in self._checkpoint_facts:
                        self._checkpoint_facts[name] = checkpoint_facts(self.run_dir / rundir.CHECKPOINTS / name)
                self.app.call_from_thread(self._apply, batch)
                if not batch["more"]:  # a long history arrives in chunks, each drawn once
                    return
        finally:
            self.follower.busy.release()

    def _apply(self, batch: dict) -> None:
        before = (self.history.events, self.history.status)
        self.follower.apply(batch)
        files_changed = (batch["checkpoints"], batch["final"], batch["recipe"], batch["log"]) != (
            self._checkpoints, self._final, self._recipe_text, self._log)
        self._checkpoints, self._final = batch["checkpoints"], batch["final"]
        self._recipe_text, self._log = batch["recipe"], batch["log"]
        self._replaying = batch["more"]
        if files_changed or before != (self.history.events, self.history.status) or self.history.status == "running":
            self._draw()

    def _draw(self) -> None:
        history = self.history
        summary = history.summary
        now = self.app.clock()
        status = Text()
        if self._replaying and history.events:
            status.append(f"reading the history: step {summary.step}", style="dim")  # its status comes at the end
            self.query_one("#monitor-status", Static).update(status)
            self.query_one(LossChart).show(history.train, history.eval, summary.total)
            return
        status.append_text(status_text(summary.status, summary.label))
        total = f"/{summary.total}" if summary.total else ""
        status.append(f"  step {summary.step}{total}")
        if summary.loss is not None:
            status.append(f"  loss {summary.loss:.4f}")
        elapsed = eta = None
        if summary.started is not None:
            end = now if summary.status in ("running", "starting") else (summary.updated or summary.started)
            elapsed = max(0.0, end - summary.started)
            eta = summary.eta  # (one rule for the ETA: the pace of the recent steps)
        status.append(f"  elapsed {duration(elapsed)}  ETA {duration(eta)}")
        if summary.reason and summary.status in ("failed", "lost", "stopped"):
            status.append(f"\n{clean(summary.reason)}", style="red" if summary.status != "stopped" else "yellow")
        self.query_one("#monitor-status", Static).update(status)

        self.query_one(LossChart).show(history.train, history.eval, summary.total)
        stats = Text()
        recipe = history.recipe
        method = rundir.what_runs(str(recipe.get("method", summary.method)),
                                  str(recipe.get("objective") or summary.extra.get("objective") or "sft"))
        self.sub_title = f"run {one_line(self.run_dir.name)} · {one_line(method)}"
        if recipe.get("quantizer") not in (None, "none"):
            method += f" + {recipe['quantizer']}"
        lr = f"{history.learning_rate:.2e}" if isinstance(history.learning_rate, (int, float)) else "-"
        rate = (f"{history.tokens_per_second:,.0f}" if isinstance(history.tokens_per_second, (int, float)) else "-")
        rows = [
            # a parent's id without its date and time (lora-sft-9b8d): the row is 25 cells wide at 80 columns
            ("model", one_line(f"\N{LEFTWARDS ARROW} {str(summary.parent.get('run')).split('-', 2)[-1]}"
                               if summary.parent else str(recipe.get("model", summary.model)).rsplit("/", 1)[-1])),
            ("method", one_line(method) + (f" · {count(history.trainable)}/{count(history.total_parameters)}"
                                 if history.trainable else "")),
            ("lr", f"{lr} · {rate} tok/s"),
            ("eval", (f"{history.eval[-1][1]:.4f}" if history.eval else "-") + f" · {history.device or '-'}"),
        ]
        for name, value in rows:
            stats.append(f"{name:<7} ", style="bold")
            stats.append(f"{value}\n")
        stats.rstrip()
        self.query_one("#monitor-stats", Static).update(stats)
        self.query_one(MemoryGauges).show(sorted(history.gpus.values(), key=lambda g: g.index), history.host,
                                          history.watermark, history.watermark_policy)
        if self._tabs_ready:
            self._draw_tabs()

    def _draw_tabs(self) -> None:
        history, summary = self.history, self.history.summary
        self._draw_checkpoints()
        log = Text()
        for event in summary.extra.get("downloads", {}).values():  # (what it took from the hub, before it began)
            log.append(one_line(download_line(event)) + "\n", style="dim")
        log.append("\n".join(one_line(line) for line in self._log[-12:]) or "(the worker's log is empty)",
                   style="red" if summary.status in ("failed", "lost") else "")
        self.query_one("#log-tail", Static).update(log)
        self.query_one("#recipe-text", Static).update(Text(clean(self._recipe_text or "")))
        if history.warnings:
            self.query_one("#warning-list", Static).update(Text("\n".join(one_line(w) for w in history.warnings[-20:])))
            self.query_one("#monitor-tabs", TabbedContent).get_tab("warnings").label = \
                f"Warnings ({len(history.warnings)})"
        else:
            self.query_one("#warning-list", Static).update(Text("no warnings", style="dim"))
        if self._memory_shown():
            self.call_later(self._draw_memory)
        if summary.status in ("failed", "lost") and not self._warned:
            self._warned = 1
            self.query_one("#monitor-tabs", TabbedContent).active = "log"

    def _draw_checkpoints(self) -> None:
        options = self.query_one("#checkpoint-list", OptionList)
        losses = dict(self.history.train)
        wanted = [(name, checkpoint_row(name, step, losses.get(step), *self._checkpoint_facts.get(name, (None, 0))))
                  for step, name in self._checkpoints]
        if self._final:
            wanted.append(("final", "final  (the result)"))
        current = [options.get_option_at_index(i).id for i in range(options.option_count)]
        if current != ([key for key, _ in wanted] or ["-"]):
            highlighted = options.highlighted
            options.clear_options()
            options.add_options([Option(label, id=key) for key, label in wanted])
            if not wanted:
                options.add_option(Option("no complete checkpoint yet", id="-", disabled=True))
            elif highlighted is not None:
                options.highlighted = min(highlighted, len(wanted) - 1)

    # -- memory: charts from the events, process tables from NVML ---------------------------------------

    def _memory_shown(self) -> bool:
        return self._tabs_ready and self.query_one("#monitor-tabs", TabbedContent).active == "memory-tab"

    @on(TabbedContent.TabActivated, "#monitor-tabs")
    def _tab_changed(self) -> None:
        """The Memory tab takes the loss chart's room too: a chart per GPU needs the height."""
        shown = self._memory_shown()
        self.set_class(shown, "-memory")
        if shown:
            self.call_later(self._draw_memory)
            self._refresh_processes()

    async def _draw_memory(self) -> None:
        """Draw the Memory tab; a call that comes while one is mounting panels has it draw once more after."""
        if self._memory_busy:
            self._memory_again = True
            return
        self._memory_busy = True
        try:
            self._memory_again = True
            while self._memory_again:
                self._memory_again = False
                await self._draw_memory_once()
        finally:
            self._memory_busy = False

    async def _draw_memory_once(self) -> None:
        """One panel per GPU of the run's memory samples (host RAM where there is none), lowest index first.

        The watermark is the one the samples carry: the run's configured ``monitor.watermark``."""
        from ..widgets.memory_chart import DevicePanel  # (plotext: imported once the Memory tab has samples)

        history = self.history
        box = self.query_one("#memory-panels", VerticalScroll)
        start = history.summary.started
        watermark = history.watermark
        wanted: list[tuple[str, int | None]] = [(f"memory-gpu-{i}", i) for i in sorted(history.gpu_series)]
        if not wanted and history.host_series:
            wanted = [("memory-host", None)]
        for panel_id, index in wanted:
            if not box.query(f"#{panel_id}"):
                await box.mount(DevicePanel(index, id=panel_id))
        self.query_one("#memory-note", Static).display = not wanted
        for panel_id, index in wanted:
            panel = box.query_one(f"#{panel_id}", DevicePanel)
            if index is None:
                panel.show_memory("host RAM", history.host_series, None, [], start,
                                  note="no GPU in this run: host RAM, this run's share is the worker's RSS "
                                       "(the watermark watches GPU memory only)")
                continue
            gpu = history.gpus.get(index)
            name = one_line(gpu.name) if gpu else f"GPU {index}"
            crossings = [e for e in history.crossings if e.get("gpu") == index]
            panel.show_memory(f"GPU{index} {name}", history.gpu_series[index], watermark, crossings, start)
            if self._processes is not None:
                panel.show_processes(self._processes.get(index, []),
                                     {p.pid: "this run" for p in self._processes.get(index, [])
                                      if p.pid in self._own_pids or self._own_pids & set(p.parents)})

    def _refresh_processes(self) -> None:
        if self._memory_shown() and self.history.gpu_series:
            self._read_processes()

    @work(thread=True, exclusive=True, exit_on_error=False, group="processes")
    def _read_processes(self) -> None:
        """Each GPU's processes (NVML and psutil: milliseconds, but never on the event loop)."""
        from finetty.core.memory import gpu

        found = {reading.index: processes for reading, processes in gpu.machine(getattr(self.app, "nvml_lib", None))}
        holder = rundir.lock_holder(self.run_dir) if rundir.is_live(self.run_dir) else None
        self.app.call_from_thread(self._apply_processes, found, {holder} if holder else set())

    def _apply_processes(self, found: dict[int, list], own: set[int]) -> None:
        self._processes, self._own_pids = found, own
        if self._memory_shown():
            self.call_later(self._draw_memory)

    # -- actions ----------------------------------------------------------------------------------------

    def action_tab(self, tab: str) -> None:
        self._tab_wanted = "memory-tab" if tab == "memory" else tab  # (a key typed before the tabs are mounted)
        if self._tabs_ready:
            self.query_one("#monitor-tabs", TabbedContent).active = self._tab_wanted

    def _chosen_checkpoint(self) -> str | None:
        if not self._tabs_ready:
            return None
        options = self.query_one("#checkpoint-list", OptionList)
        if options.highlighted is not None and options.option_count:
            key = options.get_option_at_index(options.highlighted).id
            if key and key != "-":
                return key
        return None

    def action_chat(self) -> None:
        self.app.open_chat(self.run_dir, self._chosen_checkpoint())

    def action_results(self) -> None:
        self.app.open_results(self.run_dir, self._chosen_checkpoint())

    @on(OptionList.OptionSelected, "#checkpoint-list")
    def _checkpoint_selected(self) -> None:
        self.action_chat()

    def action_stop(self) -> None:
        self.app.request(self.run_dir, "stop")

    def action_checkpoint(self) -> None:
        self.app.request(self.run_dir, "checkpoint")

    def action_resume(self) -> None:
        self.app.request(self.run_dir, "resume")
def checkpoint_facts(folder: Path) -> tuple[float | None, int]:
    """When a complete checkpoint was completed (its marker's time) and its bytes on disk."""
    try:
        done = (folder / rundir.COMPLETE_MARKER).stat().st_mtime
    except OSError:
        done = None
    size = 0
    for path in folder.rglob("*"):
        try:
            if path.is_file():
                size += path.stat().st_size
        except OSError:
            continue
    return done, size


def checkpoint_row(name: str, step: int, loss: float | None, done: float | None, size: int) -> str:
    """``step-000040  step 40 · loss 3.2140 · 12:03 · 4.2 MB``: enough to choose one to chat with or export."""
    parts = [f"{one_line(name)}  step {step}", f"loss {loss:.4f}" if loss is not None else "loss -"]
    if done is not None:
        parts.append(time.strftime("%H:%M", time.localtime(done)))
    if size:
        parts.append(next(f"{size / scale:.1f} {unit}" for unit, scale in
                          (("GB", 1e9), ("MB", 1e6), ("kB", 1e3), ("B", 1)) if size >= scale or unit == "B"))
    return " · ".join(parts)
