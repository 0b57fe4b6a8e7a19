"""``finetty notify``: the notification URLs a run would tell, and a test message to each (over SSH, no app)."""

from __future__ import annotations


def cmd_notify(args) -> int:
    from rich.console import Console

    from finetty.core.errors import InputError
    from finetty.core.recipe import config
    from finetty.core.run import notify
    from finetty.core.text import as_markup

    console = Console(highlight=False)
    urls = [(url, "config.yaml") for url in notify.config_urls()]
    if args.recipe:
        from finetty.core.plugin.registry import load_plugins
        from finetty.core.recipe import recipe as recipe_mod

        recipe = recipe_mod.load(args.recipe, [], load_plugins(), check_data=False, check_sources=False)
        urls += [(url, args.recipe) for url in recipe.notify if url not in {u for u, _ in urls}]
    if not urls:
        raise InputError(config.config_file(), "key notify", "holds no notification URL",
                         "add one, e.g. notify: [ntfy://my-topic]; or give --recipe FILE with a notify: list")
    if (args.action or "list") == "list":
        from finetty.core.recipe.notify_urls import mask

        for url, where in urls:
            console.print(f"{as_markup(mask(url))}  [dim](from {as_markup(where)})[/]", soft_wrap=True)
        return 0
    failed = 0
    deliveries = notify.deliver([url for url, _ in urls], "finetty: test notification",
                                f"A test message from `finetty notify test` on {notify.host()}: this URL works.")
    for (_, where), delivery in zip(urls, deliveries, strict=True):
        if delivery.ok:
            console.print(f"[green]delivered[/] {as_markup(delivery.url)}  [dim](from {as_markup(where)})[/]",
                          soft_wrap=True)
        else:
            failed += 1
            console.print(f"[red]failed[/]    {as_markup(delivery.url)}  [dim](from {as_markup(where)})[/]: "
                          f"{as_markup(delivery.reason)}", soft_wrap=True)
    console.print(f"{len(urls) - failed} of {len(urls)} delivered")
    return 1 if failed else 0


def add_commands(add) -> None:
    command = add("notify", cmd_notify, "the notification URLs (config.yaml's notify:, a recipe's): list, or "
                                        "test = send each a test message and say what became of it")
    command.add_argument("action", nargs="?", choices=("list", "test"),
                         help="list (default): the URLs, masked; test: send a test message to each")
    command.add_argument("--recipe", metavar="FILE", help="a recipe whose notify: URLs are added to config.yaml's")
