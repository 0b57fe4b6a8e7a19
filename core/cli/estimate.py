"""``finetty estimate RECIPE``: predicted peak GPU memory, part by part, and whether the run fits."""

from __future__ import annotations


def _size(text: str) -> int:
    """``24``, ``24G``, ``24GiB``, ``80GB`` -> bytes (GiB when no unit: what nvidia-smi's MiB divided by 1024 says)."""
    from finetty.core.errors import InputError

    raw = text.strip().lower().replace(" ", "")
    units = {"gib": 2**30, "gb": 10**9, "g": 2**30, "mib": 2**20, "mb": 10**6, "m": 2**20, "": 2**30}
    for unit in sorted(units, key=len, reverse=True):
        if raw.endswith(unit):
            try:
                value = float(raw[: len(raw) - len(unit)] if unit else raw)
            except ValueError:
                break
            if value > 0:
                return int(value * units[unit])
            break
    raise InputError("--gpu-memory", repr(text), "is not a memory size", "for example --gpu-memory 24GiB")


def cmd_estimate(args) -> int:
    import json

    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from finetty.core.memory import estimate as estimate_mod
    from finetty.core.recipe import recipe as recipe_mod
    from finetty.core.memory.gpu import GpuReading
    from finetty.core.plugin.registry import load_plugins
    from finetty.core.run import rundir
    from finetty.core.text import as_markup

    console = Console(highlight=False, soft_wrap=True)  # long lines stay whole (greppable, copyable)
    recipe = recipe_mod.load(args.recipe, list(args.set), load_plugins(), check_data=False, check_sources=False)
    gpus = None
    if args.gpu_memory:
        gpus = [GpuReading(n, "--gpu-memory", 0, _size(size), None, None) for n, size in enumerate(args.gpu_memory)]
    found = estimate_mod.estimate(recipe, gpus=gpus)
    if args.json:
        print(json.dumps(found.to_dict(), indent=2))
        return 0 if found.fits_here is not False else 1
    gib = estimate_mod.gib
    console.print(f"[bold]{as_markup(recipe.model)}[/]  {as_markup(rundir.what_runs(recipe.method, recipe.objective))}"
                  + (f" on a {recipe.quantizer} base" if recipe.quantizer != "none" else "")
                  + f"  ({found.parameters / 1e6:,.1f}M parameters, {found.trainable_parameters / 1e6:,.2f}M trainable"
                  + ("" if found.exact_trainable else ", approximate") + ")")
    console.print(f"config: {as_markup(found.config_source)}")
    console.print(f"micro-batch {found.micro_batch} x {found.max_length} tokens, gradient accumulation "
                  f"{found.accumulation}, gradient checkpointing {'on' if found.gradient_checkpointing else 'off'}")
    table = Table("part", "memory", "", box=None, pad_edge=False, padding=(0, 2))
    detail = ", ".join(f"{k} {gib(v)}" for k, v in found.weights_detail.items() if v)
    table.add_row("weights", gib(found.weights), escape(detail))
    table.add_row("gradients", gib(found.gradients), "the trainable parameters'")
    table.add_row("optimizer state", gib(found.optimizer), str(recipe.train.get("optim") or "adamw_torch_fused"))
    act = found.activations_detail
    table.add_row("activations", gib(found.activations),
                  f"layers {gib(act['layers'])}, logits and loss {gib(act['logits'])}")
    table.add_row("margin", gib(found.margin), "CUDA context, allocator, workspaces")
    table.add_row("[bold]total[/]", f"[bold]{gib(found.total)}[/]", "per GPU")
    console.print(table)
    for verdict in found.gpus:
        colour = "green" if verdict.under_watermark else "yellow" if verdict.fits else "red"
        console.print(f"[{colour}]{escape(verdict.describe(found.watermark))}[/]")
    colour = {True: "green", False: "red", None: "yellow"}[found.fits_here]
    console.print(f"[bold {colour}]{escape(found.verdict())}[/]")
    if found.suggestions:
        console.print("what would change it:" if found.gpus else "what would lower it:")
        for suggestion in found.suggestions[:5]:
            mark = "" if suggestion.fits is None else (" [green]fits[/]" if suggestion.fits else " [red]still too big[/]")
            console.print(f"  {escape(suggestion.change)}: {gib(suggestion.total)}{mark} ({escape(suggestion.why)})")
    for note in found.notes:
        console.print(f"[dim]note: {escape(note)}[/]")
    return 0 if found.fits_here is not False else 1


def add_commands(add) -> None:
    parser = add("estimate", cmd_estimate, "predict a recipe's peak GPU memory and whether it fits (no weights loaded)")
    parser.add_argument("recipe", help="a recipe .yaml file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (repeatable), e.g. train.per_device_train_batch_size=2")
    parser.add_argument("--gpu-memory", action="append", default=[], metavar="SIZE",
                        help="compare with a GPU of this size instead of the visible ones, e.g. 24GiB (repeatable)")
    parser.add_argument("--json", action="store_true", help="print the estimate as JSON")
