"""The ``finetty`` command line: every capability works headless before it gets a screen."""

from __future__ import annotations

import argparse
import logging
import sys
import time
import traceback
from pathlib import Path

from rich.console import Console
from rich.table import Table

from finetty.core import paths
from finetty.core.text import as_markup, as_text
from finetty.core.run import rundir
from finetty.core.errors import EXIT_BAD_INPUT, InputError, RunBusyError

console = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def _log_exception() -> Path:
    """Write the current traceback to ``$FINETTY_HOME/logs/finetty.log``; return its path."""
    folder = paths.log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "finetty.log"
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} finetty {' '.join(sys.argv[1:])}\n")
        handle.write(traceback.format_exc())
    return log


# -- train -----------------------------------------------------------------------------------------

def cmd_train(args) -> int:
    from finetty.core.run import launch
    from finetty.core.recipe import recipe as recipe_mod
    from finetty.core.plugin.registry import load_plugins

    runs = paths.runs_dir(args.runs_dir)
    if args.resume:
        if args.recipe or args.num_processes is not None:
            raise InputError("--resume", None, "resumes the run's own recipe and launch",
                             "drop the recipe and --num-processes (--set may change how long it trains)")
        run_dir = rundir.find(args.resume, runs)
        # --set on a resume: only keys that leave the checkpoint's meaning alone (launch.RESUME_KEYS)
        changed = launch.resume_change(run_dir, list(args.set), load_plugins(), runs) if args.set else None
        offset = _events_size(run_dir)  # follow this worker, not the end of the last one
        launch.start_worker(run_dir, resume=True, changed=changed)
        console.print(f"resuming run [bold]{as_markup(run_dir.name)}[/] from {as_markup(_resume_point(run_dir))}")
        for key, change in (changed.changes if changed else {}).items():
            console.print(f"  {as_markup(key)}: {as_markup(change['from'])} -> {as_markup(change['to'])}")
    else:
        if not args.recipe:
            raise InputError(None, "finetty train", "needs a recipe or --resume RUN",
                             "for example: finetty train recipes/demo-lora.yaml")
        registry = load_plugins()
        for plugin in registry.failed:
            err.print(f"[yellow]warning:[/] plugin {as_markup(repr(plugin.name))} ({as_markup(plugin.distribution)}) "
                      f"failed to load: {as_markup(plugin.error)}")
        overrides = list(args.set)
        if args.num_processes is not None:
            overrides.append(f"launch.num_processes={args.num_processes}")
        from finetty.core.cli.hub import fetch_for_recipe

        # what the recipe names on the Hub is fetched first (a progress bar; a refusal leaves no run
        # directory), then the recipe is checked whole against the downloaded model and data
        fetch_for_recipe(recipe_mod.load(args.recipe, overrides, registry, check_sources=False), args.recipe)
        recipe = recipe_mod.load(args.recipe, overrides, registry, runs=runs)
        run_dir = rundir.create(runs, recipe.method, recipe.to_yaml())
        offset = 0
        launch.start_worker(run_dir)
        console.print(f"run [bold]{as_markup(run_dir.name)}[/] in {as_markup(run_dir)}")
    if args.detach:
        console.print(f"training in the background; follow it with `finetty attach {as_markup(run_dir.name)}`, "
                      f"stop it with `finetty stop {as_markup(run_dir.name)}`")
        print(run_dir.name)
        return 0
    return _follow_foreground(run_dir, offset)


def _events_size(run_dir: Path) -> int:
    from finetty.core.run.events import EVENTS_FILE

    try:
        return (run_dir / EVENTS_FILE).stat().st_size
    except OSError:
        return 0


def _resume_point(run_dir: Path) -> str:
    latest = rundir.latest_checkpoint(run_dir)
    return f"checkpoint {latest.name}" if latest else "the start (no complete checkpoint yet)"


def _follow_foreground(run_dir: Path, offset: int = 0) -> int:
    from finetty.core.run import launch
    from finetty.core.run.follow import follow

    interrupts = 0

    def interrupted() -> bool:
        """The first Ctrl-C asks for a checkpoint and a stop, and following goes on; the second leaves."""
        nonlocal interrupts
        interrupts += 1
        if interrupts > 1:
            return False
        console.print("stopping: saving a checkpoint first (Ctrl-C again to leave it running)")
        try:
            launch.request_stop(run_dir)
        except InputError:
            pass
        return True

    while True:
        try:
            end = follow(run_dir, console, offset=offset, on_interrupt=interrupted)
            break
        except KeyboardInterrupt:  # (outside follow's wait, or the second one)
            if interrupts > 1 or not interrupted():
                console.print(f"the worker goes on in the background; "
                              f"`finetty stop {as_markup(run_dir.name)}` stops it")
                return 130
    return _report_end(run_dir, end, interrupts > 0)


def _wait_released(run_dir: Path, timeout: float = 30.0) -> None:
    """After the final event, wait (briefly) for the worker to let go of the run, so it can be resumed at once."""
    deadline = time.monotonic() + timeout
    while rundir.is_live(run_dir) and time.monotonic() < deadline:
        time.sleep(0.1)


def _report_end(run_dir: Path, end: dict | None, interrupted: bool = False) -> int:
    if end is not None:
        _wait_released(run_dir)
    if end is None:
        err.print(f"[red]the worker ended without a final event[/]; see {as_markup(run_dir / rundir.LOG_FILE)}")
        for line in rundir.log_tail(run_dir, 10):
            err.print(f"  {as_markup(line, one_line=True)}")
        return 1
    if end["type"] == "run_finished":
        console.print(f"finished at step {as_markup(end.get('step'))}: result in {as_markup(run_dir / rundir.FINAL)}")
        return 0
    if end["type"] == "stopped":
        console.print(f"stopped at step {as_markup(end.get('step'))}; resume with "
                      f"`finetty train --resume {as_markup(run_dir.name)}`")
        return 130 if interrupted else 0
    err.print(f"[red]run failed:[/] {as_markup(end.get('reason'))}")
    err.print(f"  the worker's log: {as_markup(run_dir / rundir.LOG_FILE)}")
    return 1


# -- runs, stop, checkpoint, attach ----------------------------------------------------------------

def _one_cell(text):
    """A cell cut with … rather than wrapped onto a second row (``← PARENT-ID`` would break at the arrow)."""
    text.no_wrap, text.overflow = True, "ellipsis"
    return text


def cmd_runs(args) -> int:
    runs = rundir.list_runs(paths.runs_dir(args.runs_dir))
    if not runs:
        console.print(f"no runs in {as_markup(paths.runs_dir(args.runs_dir))}")
        return 0
    table = Table("id", "status", "model", "method/objective", "step", "loss", "started", box=None,
                  pad_edge=False, padding=(0, 1))
    table.columns[0].no_wrap = True
    styles = {"running": "green", "finished": "cyan", "failed": "red", "lost": "red", "stopped": "yellow",
              "stalled": "yellow"}
    for run in runs:
        total = f"/{run.total}" if run.total else ""
        started = "-"
        if run.started:
            today = time.strftime("%Y%m%d") == time.strftime("%Y%m%d", time.localtime(run.started))
            started = time.strftime("%H:%M" if today else "%m-%d", time.localtime(run.started))
        table.add_row(as_text(run.id, one_line=True), as_text(run.label, styles.get(run.status, "")),
                      _one_cell(as_text(run.origin, one_line=True)),
                      as_text(rundir.what_runs(run.method, run.extra.get("objective")), one_line=True),
                      f"{run.step}{total}", f"{run.loss:.4f}" if run.loss is not None else "-", started)
    console.print(table)
    for run in runs:
        if run.status in ("lost", "failed") and run.reason:
            console.print(f"[red]{as_markup(run.id, one_line=True)}[/]: {as_markup(run.reason)}")
            if run.status == "lost":
                for line in rundir.log_tail(run.path, 3):
                    console.print(f"    {as_markup(line, one_line=True)}")
                console.print(f"    resume: finetty train --resume {as_markup(run.id, one_line=True)}")
    for run in runs:
        if run.extra.get("events_linked"):
            console.print(f"[yellow]{as_markup(run.id, one_line=True)}[/]: events.jsonl is a symbolic link; finetty "
                          "does not follow links in a run directory, so its history was not read")
        if run.skipped:
            console.print(f"[yellow]{as_markup(run.id, one_line=True)}[/]: skipped {run.skipped} line(s) of "
                          f"events.jsonl that are torn or not an event of the contract (docs/events.md)")
    for run in runs:  # the chain whole, whatever the terminal's width: the table's model column may be cut
        if run.parent and run.parent.get("run"):
            console.print(as_markup(f"{run.id} {run.origin} ({run.parent.get('mode') or '?'})", one_line=True))
    return 0


def cmd_stop(args) -> int:
    from finetty.core.run import launch

    run_dir = rundir.find(args.run, paths.runs_dir(args.runs_dir))
    offset = _events_size(run_dir)
    pid = launch.request_stop(run_dir)
    console.print(f"asked worker {pid} of run {as_markup(run_dir.name)} to checkpoint and stop")
    done = launch.await_stop(run_dir, pid, offset, timeout=args.wait)
    name = as_markup(run_dir.name)
    if done.outcome == "ended" and done.end and done.end["type"] == "stopped":
        console.print(f"stopped at step {done.end.get('step')} with checkpoint "
                      f"{as_markup(done.end.get('checkpoint') or 'none')}; resume with `finetty train --resume {name}`")
        return 0
    if done.outcome == "ended" and done.end:
        console.print(f"the run ended before the request was acted on: {done.end['type']} at step "
                      f"{done.end.get('step', '?')}")
        return 0
    if done.outcome == "exited":
        err.print(f"[red]worker {pid} exited without a final event[/]: the run is lost; resume it with "
                  f"`finetty train --resume {name}`")
        return 1
    if done.outcome == "acknowledged":
        console.print(f"worker {pid} took the request: it saves a checkpoint when its current step ends, then "
                      f"stops (`finetty attach {name}` to watch)")
        return 0
    if done.outcome == "stalled":
        err.print(f"[red]not stopped:[/] worker {pid} has not run for {int(done.stalled_for or 0)} s (its heartbeat "
                  f"stopped: suspended with SIGSTOP, or hung), so it has not seen the request; it acts on it if it "
                  f"runs again (`kill -CONT {pid}`). To end it without a checkpoint: `kill -KILL {pid}`, then "
                  f"`finetty train --resume {name}` goes on from the last checkpoint")
        return 1
    what = "has not taken the request" if done.outcome == "busy" else "has not answered (no heartbeat)"
    err.print(f"[red]not stopped yet:[/] worker {pid} is alive but {what} within {args.wait:g} s (inside one long "
              f"operation?); it stops at the end of its current step. `finetty runs` shows where it is")
    return 1


def cmd_checkpoint(args) -> int:
    from finetty.core.run import launch

    run_dir = rundir.find(args.run, paths.runs_dir(args.runs_dir))
    pid = launch.request_checkpoint(run_dir)
    console.print(f"asked worker {pid} of run {as_markup(run_dir.name)} to save a checkpoint now")
    return 0


def cmd_attach(args) -> int:
    from finetty.core.run.follow import follow

    run_dir = rundir.find(args.run, paths.runs_dir(args.runs_dir))
    try:
        end = follow(run_dir, console, history=args.history)
    except KeyboardInterrupt:
        console.print("detached; the run goes on")
        return 0
    return _report_end(run_dir, end)


# -- plugins ---------------------------------------------------------------------------------------

def cmd_plugins(args) -> int:
    from finetty.core.plugin.registry import load_plugins

    registry = load_plugins()
    table = Table("plugin", "kind", "provides", "distribution", "version", "status", box=None,
                  pad_edge=False, padding=(0, 1))
    for plugin in registry.plugins:
        kinds = sorted({kind for kind, _ in plugin.provides}) or ["-"]
        names = ", ".join(name for _, name in plugin.provides) or "-"
        status = {"ok": "[green]ok[/]", "partial": "[yellow]partial[/]"}.get(plugin.state, "[red]failed[/]")
        table.add_row(as_text(plugin.name, one_line=True), as_text(", ".join(kinds), one_line=True),
                      as_text(names, one_line=True), as_text(plugin.distribution, one_line=True),
                      as_text(plugin.version, one_line=True), status)
    console.print(table)
    for plugin in registry.failed:  # (partial ones too: what they could not register, and why)
        colour = "yellow" if plugin.state == "partial" else "red"
        console.print(f"[{colour}]{as_markup(plugin.name)}[/] ({as_markup(plugin.distribution)}): "
                      f"{as_markup(plugin.error)}", soft_wrap=True)
    if args.options:
        for kind, components in registry.components.items():
            for name, component in components.items():
                console.print(f"\n[bold]{kind} {as_markup(name)}[/]: {as_markup(component.summary)}")
                for option in getattr(component, "options", ()):
                    console.print(f"  {as_markup(option.describe())}")
        from finetty.core.recipe.sections import MODEL_OPTIONS

        console.print("\n[bold]model_options[/]: how the base model loads (a recipe key, whatever the plugins)")
        for option in MODEL_OPTIONS:
            console.print(f"  {as_markup(option.describe())}")
        from finetty.core.data.reading import DATA_OPTIONS

        console.print("\n[bold]data_options[/]: how the datasets are read (a recipe key, whatever the plugins)")
        for option in DATA_OPTIONS:
            console.print(f"  {as_markup(option.describe())}")
    return 0


# -- the parser ------------------------------------------------------------------------------------

#: Modules that add commands: each has ``add_commands(add)`` where ``add(name, func, help)`` returns
#: the sub-parser. They are imported at start-up, so they must import nothing heavy at module level.
COMMAND_MODULES: tuple[str, ...] = ("finetty.core.cli.queue", "finetty.core.cli.results",
                                    "finetty.core.cli.estimate", "finetty.core.cli.data", "finetty.core.cli.importer",
                                    "finetty.core.cli.notify", "finetty.core.cli.hub")

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="finetty", description="Fine-tune language models from a terminal.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, func, help_text):
        command = sub.add_parser(name, help=help_text, description=help_text)
        command.set_defaults(func=func)
        command.add_argument("--runs-dir", default=None, help="where runs live (default $FINETTY_HOME/runs)")
        return command

    train = add("train", cmd_train, "train from a recipe, or resume a run")
    train.add_argument("recipe", nargs="?", help="a recipe .yaml file")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe key, e.g. --set train.max_steps=50 (repeatable)")
    train.add_argument("--resume", metavar="RUN", help="continue RUN from its newest complete checkpoint; with "
                       "--set only train.max_steps, num_train_epochs, save_steps, logging_steps, eval_steps, "
                       "save_total_limit, notify and monitor.* may change")
    train.add_argument("--detach", action="store_true", help="start the worker in the background and return")
    train.add_argument("--num-processes", type=int, default=None, metavar="N",
                       help="train on N processes (one per GPU) through accelerate; same as --set launch.num_processes=N")
    add("runs", cmd_runs, "list runs")
    for name, func, text in (("stop", cmd_stop, "ask a run's worker to checkpoint and stop"),
                             ("checkpoint", cmd_checkpoint, "ask a run's worker to save a checkpoint now"),
                             ("attach", cmd_attach, "follow a run: where it is, then live")):
        command = add(name, func, text)
        command.add_argument("run", help="a run id or a run directory")
        if name == "stop":
            command.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                                 help="how long to wait for the worker to answer (default 10)")
        elif name == "attach":
            command.add_argument("--history", action="store_true",
                                 help="replay every event from the start (default: start from the history index)")
    plugins = add("plugins", cmd_plugins, "list plugins and what they provide")
    plugins.add_argument("--options", action="store_true", help="show every option of every component")
    import importlib

    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_commands(add)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        from finetty.tui.app import run_app  # the terminal app; imported only when it is asked for

        return run_app()
    logging.basicConfig(level=logging.WARNING)
    exposed = paths.home_warning()  # runs are private only in a private home
    if exposed:
        err.print(f"[yellow]warning:[/] {as_markup(exposed)}", soft_wrap=True)
    try:
        return args.func(args)
    except InputError as exc:
        _log_exception()
        err.print(f"[red]error:[/] {as_markup(exc)}", soft_wrap=True, markup=True)
        return EXIT_BAD_INPUT
    except RunBusyError as exc:
        err.print(f"[red]error:[/] {as_markup(exc)}", soft_wrap=True)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        log = _log_exception()
        err.print(f"[red]error:[/] {type(exc).__name__}: {as_markup(exc)} (details in {as_markup(log)})",
                  soft_wrap=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
