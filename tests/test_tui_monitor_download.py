"""The monitor and the Runs detail show what a run took from the Hugging Face hub (its ``download`` events), as
the terminal does.

A recorded run with a model and a dataset download event, fed to the monitor; the hub id is untrusted text
(markup and a control sequence in it must reach the screen as plain characters).
"""

from __future__ import annotations

from .test_tui_app import make_app, run, until
from .tui_runs import recorded, write_run

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_the_log_tab_shows_each_hub_download_of_the_run(runs_dir):
    from finetty.tui.screens.monitor import MonitorScreen

    events = recorded()
    ts = events[0]["ts"]
    downloads = [
        {"ts": ts, "type": "download", "kind": "model", "repo": "org/tiny[red]-model\x1b[2J", "revision": "main",
         "commit": COMMIT, "files": 3, "bytes": 1_500_000},
        {"ts": ts, "type": "download", "kind": "dataset", "repo": "org/identity", "revision": "v1",
         "commit": "fedcba9876543210", "files": 1},
    ]
    resumed = dict(downloads[0], ts=ts + 1)  # a resumed run sets up again and names the same snapshot
    run_dir = write_run(runs_dir, "261122-110826-lora-f667", events[:1] + downloads + [resumed] + events[1:])

    async def scenario():
        app = make_app(runs_dir, open_run=run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            monitor = app.screen
            assert isinstance(monitor, MonitorScreen)
            await until(pilot, lambda: monitor.history.end is not None, what="the whole history")
            await pilot.press("l")  # the Log tab
            await pilot.pause()
            assert monitor.query_one("#monitor-tabs").active == "log"
            shown = str(monitor.query_one("#log-tail").render())
            lines = shown.splitlines()
            assert sum(line.startswith("model: ") for line in lines) == 1
            assert lines[0] == ("model: org/tiny[red]-model at 0123456789ab (3 files, 1.5 MB) "
                                "from the Hugging Face cache")  # markup as characters, the escape sequence dropped
            assert lines[1] == "dataset: org/identity at fedcba987654 (1 files) from the Hugging Face cache"
            assert "\x1b" not in shown and len(lines) > 2  # the worker's log follows
            await pilot.press("escape")  # the Runs screen: its detail line names the snapshots too
            await until(pilot, lambda: "Hugging Face cache" in str(app.screen.query_one("#run-detail").render()),
                        what="the Runs detail")
            detail = str(app.screen.query_one("#run-detail").render()).splitlines()
            assert ("model: org/tiny[red]-model at 0123456789ab (3 files, 1.5 MB) from the Hugging Face cache"
                    in detail)
            assert "dataset: org/identity at fedcba987654 (1 files) from the Hugging Face cache" in detail

    run(scenario())
