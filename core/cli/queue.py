"""``finetty queue``: line up recipes to train one after another."""

from __future__ import annotations

import json
import time

from finetty.core import paths


def cmd_queue(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from finetty.core.run import queue, rundir
    from finetty.core.text import as_markup, as_text

    console = Console(highlight=False)
    runs = paths.runs_dir(args.runs_dir)
    action = args.action or "list"
    if action == "add":
        from finetty.core.recipe import recipe as recipe_mod
        from finetty.core.errors import InputError
        from finetty.core.plugin.registry import load_plugins

        if not args.target:
            raise InputError(None, "finetty queue add", "needs a recipe", "finetty queue add recipes/demo-lora.yaml")
        from finetty.core.cli.hub import fetch_for_recipe

        registry = load_plugins()
        # as `finetty train`: what the recipe names on the Hub is downloaded now, with a progress bar, so the
        # queue runner (which never goes online) finds it in the cache
        draft = recipe_mod.load(args.target, list(args.set), registry, check_sources=False)
        fetch_for_recipe(draft, args.target)
        # model: run:latest... stays unresolved until the entry starts (a stage queued before it may make it)
        stacked = queue.stacking(runs, draft, registry, args.target)
        stand_in = [f"{key}={json.dumps(value)}" for key, value in (stacked.changes if stacked else {}).items()]
        recipe = recipe_mod.load(args.target, [*args.set, *stand_in], registry, runs=runs)
        entry = queue.add(runs, recipe, stacked)
        console.print(f"queued [bold]{as_markup(entry.id)}[/]: "
                      f"{as_markup(rundir.what_runs(recipe.method, recipe.objective))} on {as_markup(entry.model)}")
        if stacked is not None:
            on = (f"the run of {stacked.after}" if stacked.after else f"run {stacked.parent_run}"
                  if stacked.parent_run else "the newest finished one")
            console.print(f"  {as_markup(entry.model)} is resolved when it starts: {as_markup(on)}")
        if not args.no_start:
            queue.ensure_runner(runs)
        return 0
    if action in ("remove", "up", "down"):
        from finetty.core.errors import InputError

        if not args.target:
            raise InputError(None, f"finetty queue {action}", "needs a queue entry id", "see `finetty queue`")
        if action == "remove":
            found = queue.remove(runs, args.target)
        else:
            found = queue.move(runs, args.target, -1 if action == "up" else 1) is not None
        if not found:
            raise InputError(None, f"queue entry {args.target!r}", "is not in the queue", "see `finetty queue`")
        console.print(f"{action} {as_markup(args.target)}: done")
        return 0
    if action == "clear":
        console.print(f"removed {queue.clear(runs)} queued run(s)")
        return 0
    if action == "run":
        started = queue.run_forever(runs, say=lambda text: console.print(
            f"{time.strftime('%H:%M:%S')} {as_markup(text)}"))
        console.print(f"queue empty; started {started} run(s)")
        return 0
    state = queue.read(runs)
    live = queue.live_runs(runs)
    if not state.entries:
        console.print(f"the queue of {as_markup(runs)} is empty")
    else:
        table = Table("#", "id", "method/objective", "model", "dataset", box=None, pad_edge=False, padding=(0, 1))
        for number, entry in enumerate(state.entries, 1):
            table.add_row(str(number), *(as_text(cell, one_line=True) for cell in (
                entry.id, rundir.what_runs(entry.method, entry.objective), entry.model, entry.dataset)))
        console.print(table)
        runner = "a runner is working it" if queue.runner_alive(runs) else "no runner: `finetty queue run` starts one"
        console.print(f"training now: {as_markup(', '.join(live) or 'nothing')}; {runner}")
    if state.last_error:
        console.print(f"[red]last problem:[/] {as_markup(state.last_error)}")
    return 0


def add_commands(add) -> None:
    command = add("queue", cmd_queue, "line up runs: list, add RECIPE, remove/up/down ID, clear, run")
    command.add_argument("action", nargs="?", choices=("list", "add", "remove", "up", "down", "clear", "run"),
                         help="list (default); add RECIPE; remove/up/down ENTRY; clear; "
                              "run = start queued runs one after another until the queue is empty")
    command.add_argument("target", nargs="?", help="a recipe (add) or a queue entry id (remove, up, down)")
    command.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                         help="override a recipe key (add)")
    command.add_argument("--no-start", action="store_true",
                         help="add without starting a background runner")
