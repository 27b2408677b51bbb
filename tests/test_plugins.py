"""The plugin host: registries, errors, and a plugin defined inside a test."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from mario_cli.cli import app
from mario_cli.errors import ConfigError, UnknownComponentError
from mario_cli.hookspecs import hookimpl
from mario_cli.plugins import KINDS, PluginHost, Registry, get_host, set_host


class TinyBackbonePlugin:
    """A third-party style plugin written inline."""

    @hookimpl
    def register_backbones(self, register: Any) -> None:
        register("tiny", lambda obs_shape, cfg: None)


@pytest.fixture
def host_with_tiny() -> Iterator[PluginHost]:
    host = PluginHost(extra_plugins=[TinyBackbonePlugin()])
    set_host(host)
    yield host
    set_host(None)


def test_builtin_plugins_load_through_entry_points() -> None:
    host = PluginHost()
    assert {"frame_skip", "grayscale", "resize", "reward", "frame_stack"} <= set(
        host["wrappers"].names()
    )
    assert {"nature", "impala"} <= set(host["backbones"].names())
    plugin_of = {c.name: c.plugin for c in host["wrappers"]}
    assert plugin_of["frame_skip"] == "mario-rl:envs"


def test_inline_plugin_backbone_is_listed_by_mario_plugins(host_with_tiny: PluginHost) -> None:
    result = CliRunner().invoke(app, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    listing = json.loads(result.output)
    assert set(listing) == {*KINDS, "commands"}
    names = [item["name"] for item in listing["backbones"]]
    assert "tiny" in names and "nature" in names
    tiny = next(item for item in listing["backbones"] if item["name"] == "tiny")
    assert "TinyBackbonePlugin" in tiny["plugin"]
    assert get_host()["backbones"].get("tiny")((4, 84, 84), None) is None


def test_unknown_name_lists_the_choices() -> None:
    registry = Registry("backbones")
    registry.register("nature", object, "p")
    registry.register("impala", object, "p")
    with pytest.raises(UnknownComponentError, match="unknown backbone 'resnet'.*impala, nature"):
        registry.get("resnet")


def test_duplicate_names_are_refused() -> None:
    registry = Registry("wrappers")
    registry.register("resize", object, "first")
    with pytest.raises(ConfigError, match="registered twice.*first.*second"):
        registry.register("resize", object, "second")


def test_misspelt_hook_fails_loudly() -> None:
    class Misspelt:
        @hookimpl
        def register_backbone(self, register: Any) -> None:  # missing "s"
            register("x", None)

    with pytest.raises(ConfigError, match="register_backbone"):
        PluginHost(load_entrypoints=False, extra_plugins=[Misspelt()])


def test_plugin_commands_are_added_and_listed() -> None:
    class CommandPlugin:
        @hookimpl
        def register_commands(self, app: Any) -> None:
            @app.command("hello")
            def hello() -> None:
                print("hello from a plugin")

    host = PluginHost(load_entrypoints=False, extra_plugins=[CommandPlugin()])
    assert [c.name for c in host.command_plugins()] == ["hello"]


def test_a_module_attribute_reference_loads_on_first_use() -> None:

    registry = Registry("backbones")
    registry.register("json", "json:dumps", "test")
    assert registry.get("json") is json.dumps
    registry.register("broken", "no_such_module_xyz:make", "test")
    with pytest.raises(ConfigError, match="points at 'no_such_module_xyz:make', which does not"):
        registry.get("broken")
    with pytest.raises(ConfigError, match="give a callable or a 'module:attribute' string"):
        registry.register("bad", "json.dumps", "test")


def test_listing_plugins_imports_no_torch() -> None:
    code = (
        "import sys; from mario_cli.plugins import PluginHost; host = PluginHost(); "
        "names = [c.name for kind in ('wrappers', 'backbones', 'algorithms') for c in host[kind]]; "
        "print(len(names), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["12", "False"]
