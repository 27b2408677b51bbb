"""The plugin manager and the registries the hooks fill.

Built-in plugins are ordinary distributions' entry points in the ``mario`` group,
so they load exactly as a third-party plugin does.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pluggy

from mario_cli import hookspecs
from mario_cli.config import ComponentSettings, install_components, table_name
from mario_cli.errors import ConfigError, UnknownComponentError

# Registry kind -> the config section its components' settings tables live in.
KIND_SECTIONS: dict[str, str] = {
    "wrappers": "env",
    "backbones": "model",
    "recurrent_cores": "model",
    "algorithms": "algo",
    "replay": "replay",
    "hints": "hints",
}

# Registry kind -> the hook that fills it.
KINDS: dict[str, str] = {
    "wrappers": "register_wrappers",
    "backbones": "register_backbones",
    "recurrent_cores": "register_recurrent_cores",
    "algorithms": "register_algorithms",
    "replay": "register_replay",
    "hints": "register_hints",
}


@dataclass(frozen=True)
class Component:
    name: str
    plugin: str
    factory: Any
    settings: type[ComponentSettings] | None = None


class Registry:
    """Named components of one kind. Duplicate names are refused.

    A factory is a callable or a ``"module:attribute"`` string, imported the first
    time the component is used, so listing plugins never imports torch.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Component] = {}

    def register(
        self,
        name: str,
        factory: Any,
        plugin: str,
        settings: type[ComponentSettings] | None = None,
    ) -> None:
        if not name or not isinstance(name, str):
            raise ConfigError(f"plugin {plugin} registered a {self.kind} entry with no name")
        if settings is not None and not (
            isinstance(settings, type) and issubclass(settings, ComponentSettings)
        ):
            raise ConfigError(
                f"plugin {plugin} registered {self.kind} {name!r} with settings={settings!r}; "
                "give a subclass of mario_cli.api.ComponentSettings"
            )
        if isinstance(factory, str) and not _is_reference(factory):
            raise ConfigError(
                f"plugin {plugin} registered {self.kind} {name!r} as {factory!r}; "
                "give a callable or a 'module:attribute' string"
            )
        if name in self._items:
            other = self._items[name].plugin
            raise ConfigError(
                f"{self.kind} {name!r} is registered twice (by {other} and {plugin}); "
                "uninstall or rename one of them"
            )
        self._items[name] = Component(name, plugin, factory, settings)

    def get(self, name: str) -> Any:
        """The factory registered under ``name``, or an error listing the choices."""
        try:
            component = self._items[name]
        except KeyError:
            choices = ", ".join(sorted(self._items)) or "none registered"
            raise UnknownComponentError(
                f"unknown {self.kind.rstrip('s').replace('_', ' ')} {name!r}; "
                f"choose one of: {choices}"
            ) from None
        if isinstance(component.factory, str):
            component = Component(name, component.plugin, self._load(component), component.settings)
            self._items[name] = component
        return component.factory

    def _load(self, component: Component) -> Any:
        module, _, attribute = component.factory.partition(":")
        try:
            return getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(
                f"{self.kind} {component.name!r} of plugin {component.plugin} points at "
                f"{component.factory!r}, which does not load ({exc}); reinstall or fix the plugin"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[Component]:
        return iter(sorted(self._items.values(), key=lambda c: c.name))


def _is_reference(text: str) -> bool:
    module, sep, attribute = text.partition(":")
    return bool(sep and module and attribute.isidentifier())


class PluginHost:
    """Loads plugins and exposes one registry per component kind."""

    def __init__(self, load_entrypoints: bool = True, extra_plugins: list[Any] = ()) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        # Plugins registered here, not installed: another process (an env worker) that
        # loads the installed ones does not have them.
        self.in_process_only = bool(extra_plugins) or not load_entrypoints
        try:
            if load_entrypoints:
                self.pm.load_setuptools_entrypoints(hookspecs.PROJECT)
            for plugin in extra_plugins:
                self.pm.register(plugin, name=_object_name(plugin))
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            raise ConfigError(
                f"plugin {exc.plugin!r} does not fit the mario hooks ({exc}); "
                "fix its hook names (see `mario plugins`) or uninstall it"
            ) from None
        except ImportError as exc:
            raise ConfigError(
                f"a mario plugin failed to import ({exc}); reinstall or uninstall it"
            ) from None
        self.registries = {kind: Registry(kind) for kind in KINDS}
        for kind, hook_name in KINDS.items():
            self._fill(self.registries[kind], getattr(self.pm.hook, hook_name))

    def _fill(self, registry: Registry, hook: pluggy.HookCaller) -> None:
        for impl in hook.get_hookimpls():
            plugin = self.plugin_name(impl.plugin)

            def register(
                name: str,
                factory: Any,
                settings: type[ComponentSettings] | None = None,
                _plugin: str = plugin,
            ) -> None:
                registry.register(name, factory, _plugin, settings)

            impl.function(register=register)

    def settings_tables(self) -> dict[str, dict[str, type[ComponentSettings]]]:
        """Section -> component name -> settings model, for every component that has one."""
        tables: dict[str, dict[str, type[ComponentSettings]]] = {}
        owners: dict[tuple[str, str], str] = {}
        for kind, section in KIND_SECTIONS.items():
            for component in self.registries[kind]:
                if component.settings is None:
                    continue
                table = table_name(component.name)
                other = owners.get((section, table))
                if other is not None:
                    raise ConfigError(
                        f"{other} and {kind} {component.name!r} both want a "
                        f"[{section}.{table}] table; rename one of them"
                    )
                owners[(section, table)] = f"{kind} {component.name!r}"
                tables.setdefault(section, {})[table] = component.settings
        return tables

    def plugin_name(self, plugin: object) -> str:
        name = self.pm.get_name(plugin) or getattr(plugin, "__name__", repr(plugin))
        for dist_plugin, dist in self.pm.list_plugin_distinfo():
            if dist_plugin is plugin:
                return f"{dist.project_name}:{name}"
        return name

    def register_commands(self, app: Any) -> None:
        self.pm.hook.register_commands(app=app)

    def __getitem__(self, kind: str) -> Registry:
        return self.registries[kind]

    def command_plugins(self) -> list[Component]:
        """Commands added by plugins through ``register_commands``."""
        found = []
        for impl in self.pm.hook.register_commands.get_hookimpls():
            collector = _CommandCollector()
            impl.function(app=collector)
            plugin = self.plugin_name(impl.plugin)
            found.extend(Component(name, plugin, fn) for name, fn in collector.commands)
        return sorted(found, key=lambda c: c.name)


class _CommandCollector:
    """Stands in for the Typer app to list the commands a plugin adds."""

    def __init__(self) -> None:
        self.commands: list[tuple[str, Callable[..., Any]]] = []

    def command(self, name: str | None = None, **_: Any) -> Callable[..., Any]:
        def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.commands.append((name or fn.__name__.replace("_", "-"), fn))
            return fn

        return decorator

    def add_typer(self, typer_app: Any, name: str | None = None, **_: Any) -> None:
        self.commands.append((name or getattr(typer_app.info, "name", "group"), typer_app))


def _object_name(plugin: object) -> str:
    """A readable name for a plugin given as a module, a class or an instance."""
    if isinstance(plugin, type) or hasattr(plugin, "__file__"):
        return getattr(plugin, "__name__", repr(plugin))
    cls = type(plugin)
    return f"{cls.__module__}.{cls.__qualname__}"


_HOST: PluginHost | None = None


def get_host() -> PluginHost:
    """The process-wide plugin host, loaded on first use."""
    global _HOST
    if _HOST is None:
        host = PluginHost()
        install_components(host.settings_tables())
        _HOST = host
    return _HOST


def set_host(host: PluginHost | None) -> None:
    """Replace the process-wide host (tests register inline plugins this way)."""
    global _HOST
    # The config's component tables follow the host (none until the next get_host).
    install_components(host.settings_tables() if host is not None else {})
    _HOST = host
