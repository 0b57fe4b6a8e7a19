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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import pluggy

from finetty.core.errors import describe
from finetty.core.plugin import hookspecs
from finetty.core.plugin.api import API_VERSION, DataFormat, Descriptor, Method, Objective, Quantizer
from finetty.core.plugin.options import Option

KINDS: dict[str, tuple[str, type[Descriptor]]] = {
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
    def state(self) -> str:
        """``ok``; ``partial`` when it registered some components and failed on others; else ``failed``."""
        if self.error is None:
            return "ok"
        return "partial" if self.provides else "failed"

    @property
    def status(self) -> str:
        return "ok" if self.error is None else f"{self.state}: {self.error}"

    @property
    def package(self) -> str:
        """What to install to get this plugin, e.g. ``finetty-freeze 1.0``."""
        return f"{self.distribution} {self.version}".strip()


@dataclass
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    plugins: list[PluginInfo]
    components: dict[str, dict[str, Any]]
    owners: dict[tuple[str, str], PluginInfo]

    def get(self, kind: str, name: str) -> Any | None:  # (the descriptor type depends on ``kind``)
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

    def used_by(self, components: Iterable[tuple[str, str]]) -> list[dict[str, str]]:
        """The plugins that provide these ``(kind, name)`` components: what a run records about where they came from."""
        found = []
        for kind, name in components:
            owner = self.owners.get((kind, name))
            if owner is not None:
                found.append({"kind": kind, "name": name, "plugin": owner.name,
                              "distribution": owner.distribution, "version": owner.version})
        return found

    def unavailable(self, kind: str, name: str, recorded: Iterable[dict[str, Any]] = ()) -> str:
        """Why ``name`` is missing, naming the package to install when a failed plugin or a past run says which."""
        broken = self.failure_for(kind, name)
        if broken is not None:
            return f"{kind} {name!r} is not available: plugin {broken.name!r} ({broken.package}) failed to load: " \
                   f"{broken.error}"
        for entry in recorded:
            if entry.get("kind") == kind and entry.get("name") == name:
                return (f"{kind} {name!r} is not available: it came from plugin {entry.get('plugin')!r}; "
                        f"install {entry.get('distribution')} {entry.get('version', '')}".rstrip())
        return f"{kind} {name!r} is not available"


#: The callables each kind of descriptor must carry (one of a tuple's alternatives is enough), and the optional ones.
REQUIRED: dict[str, tuple[tuple[str, ...], ...]] = {
    "method": (("apply",), ("load",)),
    "quantizer": (("config", "quantize"),),
    "objective": (("build_trainer",),),
    "data format": (("detect",), ("convert",)),
}
OPTIONAL: dict[str, tuple[str, ...]] = {
    "method": ("save", "restore", "disabled", "trainable"),
    "quantizer": ("config", "quantize", "prepare", "dequantize", "stored"),
    "objective": (),
    "data format": (),
}


def _check_descriptor(kind: str, obj: Any) -> str | None:
    """Why ``obj`` cannot be registered as a ``kind``, or None: checked once, here, so a bad plugin is named now
    rather than failing mid-run."""
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
    for alternatives in REQUIRED[kind]:
        if not any(callable(getattr(obj, a)) for a in alternatives):
            return f"{kind} {obj.name!r}: {' or '.join(alternatives)} must be a function, not " \
                   f"{getattr(obj, alternatives[0])!r}"
    for name in OPTIONAL[kind]:
        value = getattr(obj, name)
        if value is not None and not callable(value):
            return f"{kind} {obj.name!r}: {name} must be a function or None, not {value!r}"
    for name in ("runtime_libraries",):
        value = getattr(obj, name, None)
        if value is not None and not (isinstance(value, tuple) and all(isinstance(v, str) for v in value)):
            return f"{kind} {obj.name!r}: {name} must be a tuple of import names or None, not {value!r}"
    return None


def _call_hook(function: Callable[..., Any], argnames: Iterable[str], register: Callable[[Any], None]) -> None:
    """Call a hook implementation with the arguments it declares, and only those (pluggy's contract: an
    implementation may take a subset of the specification's arguments)."""
    given: dict[str, Any] = {"register": register, "api_version": API_VERSION}
    function(**{name: given[name] for name in argnames})


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
            info.error, info.detail = describe(exc), traceback.format_exc()
            continue
        modules.append((info, module))
    for name, module in extra:
        info = PluginInfo(name, "registered in-process", "")
        plugins.append(info)
        try:
            pm.register(module, name=name)
        except Exception as exc:
            info.error, info.detail = describe(exc), traceback.format_exc()
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
                _call_hook(impl.function, impl.argnames, found.append)
            except Exception as exc:
                failure = f"{hook_name} raised {describe(exc)}"
                info.error = failure if info.error is None else f"{info.error}; {failure}"
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
