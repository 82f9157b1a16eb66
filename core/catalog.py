"""The plugin manager and the catalog of registered components.

Built-in plugins (``ipfacediff.plugins.DEFAULT_PLUGINS``) and third-party ones (entry-point group
``ipfacediff``) go through the same hooks. ``IPFACEDIFF_PLUGINS`` limits which *third-party*
plugins load: a comma-separated list of entry-point names (empty: none).
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import pluggy

from ipfacediff import hookspecs
from ipfacediff.errors import DuplicateComponentError, IPFaceDiffError, PluginLoadError, UnknownComponentError
from ipfacediff.interfaces import INTERFACES, KINDS, Component
from ipfacediff.params import validate_params

ENTRY_POINT_GROUP = "ipfacediff"
PLUGINS_ENV = "IPFACEDIFF_PLUGINS"


@dataclass
class ComponentSpec:
    """One registered component: its kind, name, class and the plugin that registered it."""

    kind: str
    name: str
    cls: type[Component]
    plugin: str

    @property
    def description(self) -> str:
        return self.cls.description or (self.cls.__doc__ or "").strip().split("\n")[0]


@dataclass
class PluginInfo:
    name: str
    package: str
    version: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class LoadProblem:
    plugin: str
    message: str


class Catalog:
    """Every registered component, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager, plugin_info: dict[str, PluginInfo], problems: list[LoadProblem]):
        self.pm = pm
        self.plugins = plugin_info
        self.problems = problems
        self.specs: dict[str, dict[str, ComponentSpec]] = {kind: {} for kind in KINDS}
        for kind, plural in KINDS.items():
            hook = getattr(pm.hook, f"register_{plural}")
            for impl in reversed(hook.get_hookimpls()):  # registration order
                self._call_hook(impl, kind, plural)

    def _builtin(self, plugin_name: str) -> bool:
        info = self.plugins.get(plugin_name)
        return info is not None and info.builtin

    def _call_hook(self, impl, kind: str, plural: str) -> None:
        """Call one plugin's ``register_<plural>``. A built-in's failure is a bug and raises; a third
        party's is a :class:`LoadProblem` (``ipfacediff plugins`` lists it, every command warns in one
        line), what that hook registered is withdrawn, and the other plugins load as usual."""
        register = self._register_fn(kind, impl.plugin_name)
        if self._builtin(impl.plugin_name):
            impl.function(register=register)
            return
        before = set(self.specs[kind])
        try:
            impl.function(register=register)
        except Exception as exc:  # a third party's bug must not stop every command
            for name in set(self.specs[kind]) - before:
                del self.specs[kind][name]
                info = self.plugins.get(impl.plugin_name)
                if info is not None and name in info.components.get(kind, []):
                    info.components[kind].remove(name)
            told = str(exc) if isinstance(exc, IPFaceDiffError) else f"{type(exc).__name__}: {exc}"
            message = f"plugin {impl.plugin_name!r} failed in register_{plural}: {' '.join(told.split())}"
            self.problems.append(LoadProblem(impl.plugin_name, message))

    def _register_fn(self, kind: str, plugin_name: str):
        interface = INTERFACES[kind]

        def register(cls: type, name: str | None = None) -> None:
            name = name or getattr(cls, "name", "")
            if not isinstance(cls, type) or not issubclass(cls, interface):
                raise PluginLoadError(
                    f"plugin {plugin_name!r} registered {cls!r} as a {kind.replace('_', ' ')}, "
                    f"but it does not derive from ipfacediff.interfaces.{interface.__name__}"
                )
            if not name:
                raise PluginLoadError(f"plugin {plugin_name!r} registered {cls.__name__} without a name")
            existing = self.specs[kind].get(name)
            if existing is not None:
                raise DuplicateComponentError(
                    f"{kind.replace('_', ' ')} {name!r} is registered twice: first by plugin "
                    f"{existing.plugin!r} ({existing.cls.__module__}.{existing.cls.__qualname__}), "
                    f"again by plugin {plugin_name!r} ({cls.__module__}.{cls.__qualname__}); "
                    f"rename one or limit plugins with {PLUGINS_ENV}"
                )
            self.specs[kind][name] = ComponentSpec(kind, name, cls, plugin_name)
            info = self.plugins.get(plugin_name)
            if info is not None:
                info.components.setdefault(kind, []).append(name)

        return register

    def names(self, kind: str) -> list[str]:
        return sorted(self.specs[kind])

    def get(self, kind: str, name: str, where: str = "") -> ComponentSpec:
        """The spec of ``name`` or an :class:`UnknownComponentError` with the close match."""
        if kind not in self.specs:
            raise UnknownComponentError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")
        spec = self.specs[kind].get(name)
        if spec is None:
            names = self.names(kind)
            close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            prefix = f"{where}: " if where else ""
            raise UnknownComponentError(
                f"{prefix}unknown {kind.replace('_', ' ')} {name!r}{hint} (registered: {', '.join(names) or 'none'})"
            )
        return spec

    def validate(self, kind: str, name: str, params: dict[str, Any] | None, where: str = "") -> Any:
        """Check ``params`` against the component's declared ``Params``; return the dataclass."""
        spec = self.get(kind, name, where)
        return validate_params(spec.cls.Params, params, f"{where}.params" if where else f"{kind} {name}")

    def build(self, kind: str, name: str, params: dict[str, Any] | None = None, where: str = "") -> Any:
        """Instantiate a registered component with validated parameters."""
        spec = self.get(kind, name, where)
        p = self.validate(kind, name, params, where)
        try:
            obj = spec.cls(p)
        except IPFaceDiffError:
            raise
        except Exception as exc:
            if self._builtin(spec.plugin):
                raise
            # a third party's constructor: one line that names the plugin, not a traceback
            message = (
                f"{where + ': ' if where else ''}{kind.replace('_', ' ')} {name!r} of plugin {spec.plugin!r} "
                f"failed to start: {type(exc).__name__}: {' '.join(str(exc).split())}"
            )
            self.problems.append(LoadProblem(spec.plugin, message))
            raise PluginLoadError(message) from exc
        obj.name = spec.name  # the registered name (a class may be registered under several)
        obj._build = self.build  # the components it asks for come from this catalog
        return obj


def _dist_of(module_name: str) -> tuple[str, str]:
    top = module_name.split(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return dist, importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return top, "unknown"


def _allowed_third_party() -> set[str] | None:
    raw = os.environ.get(PLUGINS_ENV)
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def build_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, PluginInfo], list[LoadProblem]]:
    from ipfacediff import __version__
    from ipfacediff.plugins import DEFAULT_PLUGINS

    pm = pluggy.PluginManager("ipfacediff")
    pm.add_hookspecs(hookspecs)
    info: dict[str, PluginInfo] = {}
    problems: list[LoadProblem] = []

    for modname in DEFAULT_PLUGINS:
        mod = importlib.import_module(modname)
        pm.register(mod, name=modname)
        info[modname] = PluginInfo(modname, "ipfacediff", __version__, True)

    allowed = _allowed_third_party()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if allowed is not None and ep.name not in allowed:
            continue
        if pm.has_plugin(ep.name):
            continue
        try:
            mod = ep.load()
        except Exception as exc:  # a broken third-party plugin must not break the others
            problems.append(
                LoadProblem(ep.name, f"plugin {ep.name!r} ({ep.value}) failed to import: {type(exc).__name__}: {exc}")
            )
            continue
        try:
            pm.register(mod, name=ep.name)
        except pluggy.PluginValidationError as exc:
            problems.append(LoadProblem(ep.name, f"plugin {ep.name!r} is invalid: {exc}"))
            continue
        dist = ep.dist.name if ep.dist is not None else _dist_of(ep.value)[0]
        version = ep.dist.version if ep.dist is not None else _dist_of(ep.value)[1]
        info[ep.name] = PluginInfo(ep.name, dist, version, False)

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginLoadError(f"a plugin implements a hook that does not exist: {exc}") from exc

    for name, plugin in pm.list_name_plugin():
        if name in info:
            info[name].hooks = sorted(impl.name for impl in pm.get_hookcallers(plugin) or [])
    return pm, info, problems


_CATALOG: Catalog | None = None


def get_catalog() -> Catalog:
    """The process-wide catalog (plugins are loaded on first use)."""
    global _CATALOG
    if _CATALOG is None:
        pm, info, problems = build_plugin_manager()
        _CATALOG = Catalog(pm, info, problems)
        for p in _CATALOG.problems:
            print(f"warning: {p.message}; the other plugins are loaded", file=sys.stderr)
    return _CATALOG


def reset_catalog() -> None:
    """Forget loaded plugins (tests, or after installing a plugin in the same process)."""
    global _CATALOG
    _CATALOG = None
