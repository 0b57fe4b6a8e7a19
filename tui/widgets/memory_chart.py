"""Memory over time and the processes holding it: one panel per GPU (or host RAM). Given data; calls no core.

A person watching a long run wants to see how memory moved, where it stands
against the watermark, how much of it is the run's own and who else shares
the GPU. :class:`MemoryChart` draws one device's samples (``ts``, ``used``,
``total``, ``own``: the run's share) with the watermark as a horizontal line
and each crossing as a vertical one; :class:`ProcessTable` lists the
processes NVML reports (pid, user, memory, command, like nvitop's).
Commands and names are untrusted text: they reach the screen only cleaned,
as ``Text``, never as markup.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from finetty.core.text import one_line

GIB = 1024 ** 3
#: the least width of the command column: a command is cut (with an ellipsis) to what the table's width leaves
#: beside the other columns, so the table never scrolls sideways
LEAST_COMMAND = 16
#: the most process rows a table shows before it scrolls (and its vertical scrollbar takes two columns)
MOST_ROWS = 11
#: what a chart draws: (plotext's colour, the same ANSI colour as rich names it, the key's mark). The key is
#: drawn under the chart in these colours: plotext's own legend is a box over the plot's top left corner, where
#: the watermark line runs and where a run's memory stands while the model loads, and it hid both.
DRAWN = {
    "all processes": ("orange", "yellow", "━"),
    "this run": ("cyan", "cyan", "━"),
    "watermark": ("magenta", "magenta", "─"),
    "crossing": ("red", "red", "│"),
}


def gib(value: int | None) -> str:
    return "-" if value is None else f"{value / GIB:.1f} GiB"


def crossing_line(event: dict) -> str:
    """``watermark crossed at step 12: policy checkpoint (GPU 0 at 93%)``, from a ``watermark`` event."""
    step = event.get("step")
    fraction = event.get("fraction")
    where = f"GPU {event.get('gpu')}" + (f" at {fraction:.0%}" if isinstance(fraction, (int, float)) else "")
    verb = "crossed" if event.get("state") == "crossed" else "recovered"
    text = f"watermark {verb} at step {step if step is not None else '-'}"
    if verb == "crossed":
        text += f": policy {event.get('policy') or '?'}"
    return one_line(f"{text} ({where})")


class MemoryChart(PlotextPlot):
    """One device's memory against time: all processes, the run's own share, the watermark, the crossings.

    Set :meth:`show`; it keeps what it drew (``lines``, ``marks``) so a test can read the chart's meaning
    rather than its braille."""

    DEFAULT_CSS = """
    MemoryChart { height: 12; min-height: 8; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.title = "memory"
        self.points: list = []
        self.watermark: float | None = None
        self.marks: list[tuple[float, str]] = []
        """(x, label) of each vertical line: a watermark crossing, with its policy"""
        self.lines: dict[str, list[tuple[float, float]]] = {}
        """label -> the (x, GiB) points drawn"""
        self.unit = "s"

    def on_mount(self) -> None:
        super().on_mount()
        self._draw()

    def show(self, title: str, points: Sequence, watermark: float | None = None, crossings: Iterable[dict] = (),
             start: float | None = None) -> None:
        """``points``: samples with ``ts``, ``used``, ``total`` and ``own`` (None where unknown), oldest first;
        ``crossings``: this device's ``watermark`` events; ``start``: time zero of the x axis (the run's start)."""
        self.title = title
        self.points = thin(list(points))
        self.watermark = watermark
        origin = start if start is not None else (self.points[0].ts if self.points else 0.0)
        span = (self.points[-1].ts - origin) if self.points else 0.0
        self.unit, scale = ("min", 60.0) if span >= 180 else ("s", 1.0)

        def x(ts: float) -> float:
            return round((ts - origin) / scale, 3)

        self.lines = {"all processes": [(x(p.ts), p.used / GIB) for p in self.points]}
        own = [(x(p.ts), p.own / GIB) for p in self.points if p.own is not None]
        if own:
            self.lines["this run"] = own
        self.marks = [(x(float(event.get("ts") or origin)), crossing_line(event)) for event in crossings
                      if event.get("state") == "crossed"]
        self._draw()

    def _draw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title(self.title)
        plt.xlabel(self.unit)
        if not self.points:
            plt.title(f"{self.title} (no memory samples yet)")
            self.refresh()
            return
        total = max(p.total for p in self.points) / GIB
        xs = [x for line in self.lines.values() for x, _ in line] + [x for x, _ in self.marks]
        left, right = min(xs), max(max(xs), min(xs) + 1e-3)
        for label in ("all processes", "this run"):
            line = self.lines.get(label)
            if line:
                plt.plot([x for x, _ in line], [y for _, y in line], marker="braille", color=DRAWN[label][0])
        if self.watermark is not None:
            level = self.watermark * total
            plt.plot([left, right], [level, level], marker="-", color=DRAWN["watermark"][0])
        for x, _ in self.marks:
            plt.plot([x, x], [0, total], marker="│", color=DRAWN["crossing"][0])
        plt.xlim(left, right)
        plt.ylim(0, total)
        self.refresh()

    def key(self) -> Text:
        """``━ all processes  ━ this run  ─ watermark 90%  │ crossing``: each line drawn, in its colour."""
        names = [name for name in ("all processes", "this run") if self.lines.get(name)]
        if self.points and self.watermark is not None:
            names.append("watermark")
        if self.marks:
            names.append("crossing")
        key = Text()
        for name in names:
            _, colour, mark = DRAWN[name]
            key.append(("  " if key else "") + mark, style=f"bold {colour}")
            key.append(f" {name}" + (f" {self.watermark:.0%}" if name == "watermark" else ""))
        return key


def thin(points: list, most: int = 600) -> list:
    """At most ``most`` samples (every k-th, and always the last): a days-long run redraws as fast as a short one."""
    if len(points) <= most:
        return points
    k = -(-len(points) // most)
    return points[::k] + ([points[-1]] if (len(points) - 1) % k else [])


def short_command(command: str) -> str:
    """The command with its program's folder left out (``/opt/venv/bin/python -m x`` -> ``python -m x``):
    at 80 columns the arguments say more than the path."""
    program, space, rest = command.partition(" ")
    return program.rsplit("/", 1)[-1] + space + rest if "/" in program else command


class ProcessTable(DataTable):
    """The processes on one GPU: pid, user, GPU memory, (the finetty run, when asked), command.

    Set :meth:`show` with objects that have ``pid``, ``user``, ``used`` and ``command`` and a
    ``{pid: label}`` of the ones to mark (this run's, or which run a process trains)."""

    DEFAULT_CSS = f"""
    ProcessTable {{ height: auto; max-height: {MOST_ROWS + 1}; width: 1fr; overflow-x: hidden; }}
    """

    def __init__(self, *, runs_column: bool = False, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes, cursor_type="row", zebra_stripes=True, show_cursor=False)
        self.runs_column = runs_column
        self.rows_shown: list[tuple[int, str, str, str, str]] | None = None
        """(pid, user, memory, run label, command) as shown, for tests and for skipping a redraw"""
        self._given: tuple[list, dict[int, str]] | None = None
        """the last :meth:`show`'s processes and labels: cut again to the new width when the table resizes"""
        self._add_columns()

    def _add_columns(self) -> None:
        for name in ["pid", "user", "GPU mem"] + (["run"] if self.runs_column else []) + ["command"]:
            self.add_column(name, key=name)

    def show(self, processes: Iterable, labels: dict[int, str] | None = None) -> None:
        self._given = (list(processes), dict(labels or {}))
        self._fill()

    def on_resize(self) -> None:
        """A table filled before its first layout (or on a narrower screen) cut its commands to a width it no
        longer has: cut them again to this one (nothing is redrawn when the cut comes out the same)."""
        if self._given is not None:
            self._fill()

    def _fill(self) -> None:
        processes, labels = self._given
        rows = [(int(p.pid), one_line(p.user)[:12], gib(p.used), one_line(labels.get(p.pid, "")),
                 short_command(one_line(p.command))) for p in processes]
        columns = [("pid", 0), ("user", 1), ("GPU mem", 2)] + ([("run", 3)] if self.runs_column else [])
        padding = 2 * self.cell_padding  # each column's cells are padded on both sides
        beside = sum(max([len(name)] + [len(str(row[i])) for row in rows]) + padding for name, i in columns)
        scrollbar = self.styles.scrollbar_size_vertical if len(rows) > MOST_ROWS else 0
        # a scrollbar only where the rows are more than the table shows (a table shown mid-layout, a row taller
        # for a moment, would otherwise draw one over the commands' ends)
        self.styles.overflow_y = "auto" if len(rows) > MOST_ROWS else "hidden"
        most = max(LEAST_COMMAND, (self.size.width or 80) - beside - padding - scrollbar)
        rows = [row[:4] + ((row[4][: most - 1] + "…") if len(row[4]) > most else row[4],) for row in rows]
        if rows == self.rows_shown:
            return
        self.rows_shown = rows
        self.clear(columns=True)  # (a column keeps the widest width it ever had: a wider cut would stay drawn)
        self._add_columns()
        for pid, user, used, label, command in rows:
            mine = bool(label)
            cells = [Text(str(pid), style="bold cyan" if mine else ""), Text(user), Text(used, justify="right")]
            if self.runs_column:
                cells.append(Text(label, style="cyan"))
            cells.append(Text(command, style="" if mine or self.runs_column else "dim"))
            self.add_row(*cells, key=str(pid))
        if not rows:
            self.add_row(*([Text("-")] * (len(self.columns) - 1)), Text("no process NVML can see", style="dim"))


class DevicePanel(Vertical):
    """One GPU (or host RAM) in the monitor: its chart, one legend line per crossing, and its processes."""

    DEFAULT_CSS = """
    DevicePanel { height: auto; margin-bottom: 1; }
    DevicePanel > .legend { height: auto; color: $text-muted; }
    """

    def __init__(self, index: int | None, *, id: str | None = None):
        super().__init__(id=id)
        self.index = index
        """the GPU's NVML index, or None for host RAM"""

    def compose(self) -> ComposeResult:
        yield MemoryChart(classes="chart")
        yield Static(classes="legend")
        if self.index is not None:
            yield ProcessTable(classes="processes")

    def show_memory(self, title: str, points: Sequence, watermark: float | None, crossings: list[dict],
                    start: float | None, note: str = "") -> None:
        chart = self.query_one(MemoryChart)
        chart.show(title, points, watermark, crossings, start)
        legend = chart.key()
        if legend:
            legend.append("\n")
        last = points[-1] if points else None
        if last is not None:
            legend.append(f"now {gib(last.used)} of {gib(last.total)}")
            if last.own is not None:
                legend.append(f" · this run {gib(last.own)} · others {gib(max(0, last.used - last.own))}")
        if note:
            legend.append(("\n" if legend else "") + note)
        for event in crossings:
            legend.append("\n" if legend else "")
            legend.append(crossing_line(event), style="bold red" if event.get("state") == "crossed" else "green")
        self.query_one(".legend", Static).update(legend)

    def show_processes(self, processes: Iterable, labels: dict[int, str] | None = None) -> None:
        if self.index is not None:
            self.query_one(ProcessTable).show(processes, labels)
