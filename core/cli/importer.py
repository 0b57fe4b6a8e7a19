"""``finetty import llamafactory FILE.yaml``: another tool's training config as a finetty recipe.

The translation lives in :mod:`finetty.core.recipe.llamafactory`; this module
only reads the arguments, writes the recipe (or prints it) and lists what was
not translated, on stderr, so ``> recipe.yaml`` captures the recipe alone.
"""

from __future__ import annotations

from pathlib import Path

SOURCES = ("llamafactory",)


def cmd_import(args) -> int:
    from rich.console import Console

    from finetty.core.errors import InputError
    from finetty.core.recipe.llamafactory import import_file
    from finetty.core.text import one_line

    out = Path(args.out) if args.out else None
    if out is not None and out.exists() and not args.force:
        raise InputError("-o", str(out), "already exists", "choose a new file name, or add --force to replace it")
    info = Path(args.dataset_info) if args.dataset_info else None
    text, left = import_file(Path(args.file), info, out)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    if out is None:
        print(text, end="")
    else:
        out.write_text(text, encoding="utf-8")
        err.print(f"wrote {one_line(str(out))}; train it with: finetty train {one_line(str(out))}", markup=False)
    if left:
        err.print(f"not translated ({len(left)}):", markup=False)
        for line in left:
            err.print(f"  {one_line(line)}", markup=False)
    return 0


def add_commands(add) -> None:
    command = add("import", cmd_import, "write a finetty recipe from another tool's training config")
    command.add_argument("source", choices=SOURCES, help="the tool the config comes from")
    command.add_argument("file", help="its training config, e.g. llama3_lora_sft.yaml")
    command.add_argument("--dataset-info", default=None, metavar="PATH",
                         help="the dataset_info.json its dataset names refer to (default: dataset_dir/dataset_info.json "
                              "beside the config)")
    command.add_argument("-o", "--out", default=None, metavar="OUT.yaml", help="write the recipe here (default: print it)")
    command.add_argument("--force", action="store_true", help="replace OUT.yaml if it exists")
