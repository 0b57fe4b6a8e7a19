"""The loss chart: train and eval loss against the step (textual-plotext). Given data; calls no core."""

from __future__ import annotations

from textual.widget import Widget


class LossChart(Widget):
    """Set :meth:`show` with ``[(step, loss)]`` lists; it redraws once per call, however many points arrived.

    The plot itself (textual-plotext, with plotext under it) is imported and mounted just after the first
    frame: its import is a twentieth of a second that the monitor's first frame does not wait for. Points
    given before then are kept and drawn when it comes."""

    DEFAULT_CSS = """
    LossChart { height: 1fr; min-height: 8; }
    LossChart > * { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None, classes: str | None = None):
        super().__init__(id=id, classes=classes)
        self.train: list[tuple[int, float]] = []
        self.eval: list[tuple[int, float]] = []
        self.total: int | None = None
        self._plot = None

    def on_mount(self) -> None:
        self.call_after_refresh(self._mount_plot)

    async def _mount_plot(self) -> None:
        if not self.is_attached:  # (its screen was left before its first frame was drawn)
            return
        from textual_plotext import PlotextPlot

        plot = PlotextPlot()
        await self.mount(plot)
        self._plot = plot
        self._draw()

    @property
    def plt(self):
        """plotext's figure of the mounted plot (None before it is mounted)."""
        return self._plot.plt if self._plot is not None else None

    def show(self, train: list[tuple[int, float]], eval_: list[tuple[int, float]], total: int | None = None) -> None:
        self.train, self.eval, self.total = self.thin(train), self.thin(eval_), total
        self._draw()

    @staticmethod
    def thin(points: list[tuple[int, float]], most: int = 600) -> list[tuple[int, float]]:
        """At most ``most`` points (every k-th, and always the last): a long run redraws as fast as a short one."""
        if len(points) <= most:
            return points
        k = -(-len(points) // most)
        return points[::k] + ([points[-1]] if (len(points) - 1) % k else [])

    def _draw(self) -> None:
        if self._plot is None:
            return
        plt = self._plot.plt
        plt.clear_data()
        plt.clear_figure()
        plt.xlabel("step")
        # which line is which, in the title: plotext's legend is a box over the plot's top left corner, where
        # a loss curve starts (its highest point), and it hid the first steps
        plt.title("loss: train ⣀ (cyan), eval • (orange)" if self.eval else "loss")
        if self.train:
            plt.plot([s for s, _ in self.train], [v for _, v in self.train], marker="braille", color="cyan")
        if self.eval:
            plt.plot([s for s, _ in self.eval], [v for _, v in self.eval], marker="dot", color="orange")
        if self.total:
            plt.xlim(0, max(self.total, self.train[-1][0] if self.train else 0))
        if not self.train and not self.eval:
            plt.title("loss (no steps yet)")
        self._plot.refresh()
