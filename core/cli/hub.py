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
