"""``finetty data RECIPE``: the data half of a run, without training.

The recipe is validated as ``finetty train`` would, the data read through the
same reader the worker uses, and the report (:mod:`finetty.core.data.report`,
the same one the app's preview shows) printed: the format and why, each
column's fate, counts, token lengths against ``max_length``, and ``--show N``
examples rendered through the chat template with the trained part marked
(colour on a terminal, ``[[...]]`` when piped). ``--json`` prints the report
as one JSON object.
"""

from __future__ import annotations

OPEN, CLOSE = "[[", "]]"


def load_report(recipe_path, overrides: list[str], show: int) -> dict:
    """Validate the recipe, read its data, load its tokenizer and describe the data (InputError for bad input)."""
    from pathlib import Path

    from finetty.core.data import demo
    from finetty.core.data import reading as data_mod
    from finetty.core.data.report import describe
    from finetty.core.data.tokenize import TemplateCannotRenderTools, check_renders_tools
    from finetty.core.errors import InputError
    from finetty.core.model import loading as models
    from finetty.core.plugin.registry import load_plugins
    from finetty.core.recipe import recipe as recipe_mod

    registry = load_plugins()
    recipe = recipe_mod.load(recipe_path, overrides, registry, check_data=False)
    objective = registry.objectives[recipe.objective]
    base = Path(recipe_path).resolve().parent if recipe_path else Path.cwd()
    found = data_mod.read_data(data_mod.parse_dataset(recipe.dataset, base, recipe_path), recipe.format,
                               registry.data_formats, objective.accepts, objective.name, recipe.dataset_options,
                               recipe.data_options, {n: o.accepts for n, o in registry.objectives.items()},
                               recipe_path, hub=True, seed=recipe.train.get("seed", 42), train=recipe.train)
    model_dir = demo.ensure_demo() if recipe.model == demo.NAME else models.resolve(recipe.model, base)
    tokenizer = models.load_tokenizer(model_dir, recipe.trust_remote_code, recipe.chat_template)
    if found.tools:
        try:
            check_renders_tools(tokenizer)
        except TemplateCannotRenderTools as exc:
            raise InputError(recipe_path, "key model", f"{exc}, and the dataset has tool schemas or tool calls",
                             "use a model whose chat template renders tools, or drop the tools") from None
    return describe(found, tokenizer, recipe.train["max_length"], recipe.train["truncation"], show)


def cmd_data(args) -> int:
    import json

    from rich.console import Console
    from rich.text import Text

    from finetty.core.text import as_text, clean

    show = args.show if args.show is not None else (2 if args.json else 0)
    report = load_report(args.recipe, list(args.set), show)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False))
        return 0
    console = Console(highlight=False, soft_wrap=True)
    how = f"detected: {report['why']}" if report["detected"] else "given in the recipe"
    console.print(as_text(f"format {report['format']} ({how})", one_line=True))
    for name, fate in report["columns"].items():
        mapped = f" as {report['mapped'][name]}" if name in report["mapped"] else ""
        line = as_text(f"  column {name}: {fate}{mapped} ({report['carried'][name]} records)", one_line=True)
        if fate == "ignored":
            line.stylize("yellow")
        console.print(line)
    tokens = report["tokens"]
    counted = "" if tokens["all"] else f" (the first {tokens['counted']})"
    console.print(f"records: {report['records']} read, {report['examples_total']} examples, "
                  f"{sum(report['skipped'].values())} skipped, {report['truncated']} truncated, "
                  f"{report['dropped']} dropped")
    for why, count in report["skipped"].items():
        console.print(as_text(f"  skipped {count}: {why}"))
    console.print(f"tokens{counted}: min {tokens['min']} · median {tokens['median']:g} · max {tokens['max']} "
                  f"(max_length {tokens['max_length']}, {tokens['over']} over)")
    for item in report["mixture"] if len(report["mixture"]) > 1 else []:
        console.print(as_text(f"  {item['examples']} examples from {item['dataset']} ({item['format']}, "
                              f"{item['records']} records, weight {item['weight']:g})", one_line=True))
    for warning in report["warnings"]:
        console.print(Text("warning: ", style="yellow") + as_text(warning))
    for number, example in enumerate(report["examples"], 1):
        console.print(Text(f"── example {number} ──", style="dim"))
        text = Text()
        for segment in example["segments"]:
            piece = clean(segment["text"])
            if not segment["trained"]:
                text.append(piece)
            elif console.is_terminal:
                text.append(piece, style="bold green")
            else:
                text.append(f"{OPEN}{piece}{CLOSE}")
        if "label" in example:
            text.append(f"\n(label: {'desirable' if example['label'] else 'undesirable'})", style="dim")
        if "rejected" in example:
            text.append("\n[rejected] ", style="dim")
            text.append(clean(example["rejected"]))
        console.print(text)
    return 0


def add_commands(add) -> None:
    parser = add("data", cmd_data, "show a recipe's data as training will see it, without training")
    parser.add_argument("recipe", help="a recipe .yaml file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe key (repeatable), e.g. dataset=other.jsonl")
    parser.add_argument("--show", type=int, default=None, metavar="N",
                        help="render N examples through the chat template, the trained part marked "
                             "(default: none, 2 with --json)")
    parser.add_argument("--json", action="store_true", help="print the report as one JSON object")
