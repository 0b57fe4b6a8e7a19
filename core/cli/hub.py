"""``finetty pull``: a model or dataset from the Hugging Face Hub into the local cache, with a progress bar.

``finetty train`` fetches what its recipe names the same way (:func:`fetch`),
before the run directory exists, so a gated, missing or unreachable repository
is refused with exit code 2 and leaves nothing behind.
"""

from __future__ import annotations

from pathlib import Path


def fetch(refs, source=None, console=None) -> list[Path]:
    """Download each ``(HubRef, place)`` the cache lacks, one rich progress bar each; their snapshot folders.

    Nothing is drawn for what is cached already (no request is made for it either)."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    from finetty.core.data import hub
    from finetty.core.text import as_markup

    console = console or Console(stderr=True, highlight=False)
    folders = []
    for ref, place in refs:
        folder = hub.cached(ref)
        if folder is None:
            hub.require_online(ref, source, place)
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                       TextColumn("{task.fields[files]}"), TransferSpeedColumn(), TimeRemainingColumn())
            with Progress(*columns, console=console, transient=False) as bar:
                task = bar.add_task(f"{as_markup(ref.describe(), one_line=True)} ({ref.kind})", total=None, files="")

                def show(state: dict, task=task, bar=bar) -> None:
                    bar.update(task, completed=state["bytes_done"], total=state["bytes_total"] or None,
                               files=f"{state['files_done']}/{state['files_total']} files")

                folder = hub.download(ref, show, source, place)
            console.print(f"{as_markup(ref.describe(), one_line=True)}: in the cache at {as_markup(folder)}")
        folders.append(folder)
    return folders


def fetch_for_recipe(recipe, recipe_path) -> list[Path]:
    """What a recipe (validated without its sources) names on the Hub, fetched before a run is created."""
    from finetty.core.data import hub

    base = Path(recipe_path).resolve().parent if recipe_path else Path.cwd()
    refs = hub.recipe_refs(recipe.model, recipe.dataset, base, code=bool(recipe.trust_remote_code))
    return fetch(refs, recipe_path)


def fetch_json(ref, place: str, out=None, every: float = 0.1) -> int:
    """Download ``ref`` printing one JSON object a line, for a program reading the output (the app's New run
    screen): ``{"repo", "kind", "files_done", "files_total", "bytes_done", "bytes_total"}`` as the download goes
    (at most one per ``every`` seconds, the last always), then ``{"done": true, "folder"}``; a refusal is one
    ``{"error", "problem", "fix"}`` line and exit code 2. Nothing is drawn for a person."""
    import json
    import sys
    import time

    from finetty.core.data import hub
    from finetty.core.errors import EXIT_BAD_INPUT, InputError

    out = out or sys.stdout
    last = [0.0]

    def say(fields: dict) -> None:
        out.write(json.dumps(fields) + "\n")
        out.flush()

    def show(state: dict) -> None:
        now = time.monotonic()
        complete = state["bytes_total"] and state["bytes_done"] >= state["bytes_total"]
        if now - last[0] >= every or complete:
            last[0] = now
            say({"repo": ref.describe(), "kind": ref.kind, **state})

    try:
        folder = hub.download(ref, show, "finetty pull", place)
    except InputError as exc:
        say({"error": str(exc), "problem": exc.problem, "fix": exc.fix})
        return EXIT_BAD_INPUT
    say({"done": True, "repo": ref.describe(), "kind": ref.kind, "folder": str(folder)})
    return 0


def cmd_pull(args) -> int:
    from finetty.core.data import hub
    from finetty.core.errors import InputError

    kind = "dataset" if args.dataset else "model"
    parsed = hub.parse_id(args.repo)
    if parsed is None:
        raise InputError("finetty pull", None, f"{args.repo!r} is not a hub id",
                         "give org/name, optionally with @revision (or --revision)")
    repo_id, revision = parsed
    if args.revision and revision and args.revision != revision:
        raise InputError("finetty pull", "--revision", f"{args.revision!r} contradicts {args.repo!r}",
                         "give the revision once")
    ref = hub.HubRef(kind, repo_id, args.revision or revision, code=args.code)
    if args.progress_json:
        return fetch_json(ref, f"{kind} {repo_id}")
    (folder,) = fetch([(ref, f"{kind} {repo_id}")])
    print(folder)  # (the snapshot folder alone on stdout, for scripts)
    return 0


def add_commands(add) -> None:
    pull = add("pull", cmd_pull, "download a model or dataset from the Hugging Face Hub into the local cache")
    pull.add_argument("repo", metavar="MODEL_OR_DATASET", help="a hub id, org/name (org/name@revision pins one)")
    pull.add_argument("--revision", default=None, help="a branch, tag or commit (default main)")
    pull.add_argument("--dataset", action="store_true", help="the id names a dataset, not a model")
    pull.add_argument("--code", action="store_true",
                      help="fetch the repository's Python files too (for a model with trust_remote_code)")
    pull.add_argument("--progress-json", action="store_true",
                      help="print one JSON object a line (repo, files and bytes done and in all; then done and "
                           "folder, or error) instead of the progress bar: for programs reading the output")
