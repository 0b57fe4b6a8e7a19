"""Plugin discovery: entry points in the ``finetty`` group, each loaded in isolation.

A plugin that fails to import, or whose hook raises, or that registers a name
already taken or an invalid descriptor, is recorded with its error; loading
goes on. Discovery imports no torch: plugin modules keep heavy imports inside
functions. ``FINETTY_LOAD_PLUGINS`` (comma-separated entry-point names)
limits which plugins load.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any, Iterable

import pluggy

from finetty.core.plugin import hookspecs
from finetty.core.plugin.options import Option
from finetty.core.plugin.api import DataFormat, Method, Objective, Quantizer

KINDS: dict[str, tuple[str, type]] = {
    "method": ("register_methods", Method),
    "quantizer": ("register_quantizers", Quantizer),
    "objective": ("register_objectives", Objective),
    "data format": ("register_data_formats", DataFormat),
}
ENTRY_POINT_GROUP = "finetty"
OWN_DISTRIBUTION = "finetty"


@dataclass
class PluginInfo:
    """One entry point: where it came from, what it added, and what went wrong."""

    name: str
    distribution: str
    version: str
    provides: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    detail: str | None = None

    @property
    def status(self) -> str:
        return "ok" if self.error is None else f"failed: {self.error}"


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    plugins: list[PluginInfo]
    components: dict[str, dict[str, Any]]
    owners: dict[tuple[str, str], PluginInfo]

    def get(self, kind: str, name: str) -> Any | None:
        return self.components[kind].get(name)

    def names(self, kind: str) -> list[str]:
        return list(self.components[kind])

    @property
    def methods(self) -> dict[str, Method]:
        return self.components["method"]

    @property
    def quantizers(self) -> dict[str, Quantizer]:
        return self.components["quantizer"]

    @property
    def objectives(self) -> dict[str, Objective]:
        return self.components["objective"]

    @property
    def data_formats(self) -> dict[str, DataFormat]:
        return self.components["data format"]

    @property
    def failed(self) -> list[PluginInfo]:
        return [p for p in self.plugins if p.error]

    def failure_for(self, kind: str, name: str) -> PluginInfo | None:
        """The failed plugin that would have provided ``name``, when one matches by name."""
        for plugin in self.failed:
            if plugin.name == name or (kind, name) in plugin.provides:
                return plugin
        return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_descriptor(kind: str, obj: Any) -> str | None:
    expected = KINDS[kind][1]
    if not isinstance(obj, expected):
        return f"registered {type(obj).__name__} where a {expected.__name__} was expected"
    if not isinstance(obj.name, str) or not obj.name or " " in obj.name:
        return f"{kind} name {obj.name!r} is not a plain word"
    if not isinstance(obj.summary, str) or not obj.summary:
        return f"{kind} {obj.name!r} has no summary"
    options = getattr(obj, "options", ())
    if not all(isinstance(o, Option) for o in options):
        return f"{kind} {obj.name!r}: options must be Option descriptors"
    names = [o.name for o in options]
    if len(set(names)) != len(names):
        return f"{kind} {obj.name!r}: option names repeat"
    return None


def _allowlist() -> set[str] | None:
    raw = os.environ.get("FINETTY_LOAD_PLUGINS")
    if raw is None:
        return None
    return {n.strip() for n in raw.split(",") if n.strip()}


def discover(extra: Iterable[tuple[str, ModuleType | Any]] = ()) -> Registry:
    """Load every allowed entry point (finetty's own first) plus ``extra`` (name, module) pairs."""
    pm = pluggy.PluginManager("finetty")
    pm.add_hookspecs(hookspecs)
    allow = _allowlist()
    eps = [ep for ep in entry_points(group=ENTRY_POINT_GROUP) if allow is None or ep.name in allow]
    eps.sort(key=lambda ep: (ep.dist is None or ep.dist.name != OWN_DISTRIBUTION, ep.name))
    plugins: list[PluginInfo] = []
    modules: list[tuple[PluginInfo, Any]] = []
    seen: set[str] = set()
    for ep in eps:
        dist = ep.dist.name if ep.dist else "?"
        info = PluginInfo(ep.name, dist, ep.dist.version if ep.dist else "?")
        plugins.append(info)
        if ep.name in seen:
            info.error = f"entry point name {ep.name!r} is used by another plugin"
            continue
        seen.add(ep.name)
        try:
            module = ep.load()
            pm.register(module, name=ep.name)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a plugin must never take discovery down, not even by exiting
            info.error, info.detail = _one_line(exc), traceback.format_exc()
            continue
        modules.append((info, module))
    for name, module in extra:
        info = PluginInfo(name, "(registered in-process)", "")
        plugins.append(info)
        try:
            pm.register(module, name=name)
        except Exception as exc:
            info.error, info.detail = _one_line(exc), traceback.format_exc()
            continue
        modules.append((info, module))

    components: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    owners: dict[tuple[str, str], PluginInfo] = {}
    by_plugin = {id(module): info for info, module in modules}
    for kind, (hook_name, _) in KINDS.items():
        caller = getattr(pm.hook, hook_name)
        for impl in caller.get_hookimpls():  # registration order: finetty's own first
            info = by_plugin[id(impl.plugin)]
            found: list[Any] = []
            try:
                impl.function(**{name: found.append for name in impl.argnames})
            except Exception as exc:
                problem = f"{hook_name} raised {_one_line(exc)}"
                info.error = problem if info.error is None else f"{info.error}; {problem}"
                info.detail = traceback.format_exc()
                continue
            for obj in found:
                problem = _check_descriptor(kind, obj)
                if problem is None and obj.name in components[kind]:
                    owner = owners[(kind, obj.name)]
                    problem = (f"{kind} {obj.name!r} is already provided by plugin {owner.name!r} "
                               f"({owner.distribution}); skipped")
                if problem:
                    info.error = problem if info.error is None else f"{info.error}; {problem}"
                    continue
                components[kind][obj.name] = obj
                owners[(kind, obj.name)] = info
                info.provides.append((kind, obj.name))
    return Registry(plugins=plugins, components=components, owners=owners)


_CACHED: Registry | None = None


def load_plugins(refresh: bool = False) -> Registry:
    """The process-wide registry (discovered once)."""
    global _CACHED
    if _CACHED is None or refresh:
        _CACHED = discover()
    return _CACHED
