"""The plugin boundary: built-in plugins use only ``mario_cli.api``; the host imports no plugin."""

from __future__ import annotations

import ast
from pathlib import Path

import mario_cli.api as api

REPO = Path(__file__).resolve().parents[1]
PLUGINS = ("mario_algos", "mario_envs", "mario_hints", "mario_models", "mario_replay")


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports (absolute), with its line, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


def test_builtin_plugins_import_nothing_from_mario_but_the_api() -> None:
    offending = []
    for package in PLUGINS:
        for path in sorted((REPO / "plugins" / package).rglob("*.py")):
            for line, module in imported_modules(path):
                if module.split(".")[0] == "mario_cli" and module != "mario_cli.api":
                    offending.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert offending == []


def test_no_host_module_imports_a_plugin_package() -> None:
    offending = []
    for path in sorted((REPO / "mario_cli").rglob("*.py")):
        for line, module in imported_modules(path):
            if module.split(".")[0] in PLUGINS:
                offending.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert offending == []


def test_every_public_name_resolves() -> None:
    for name in api.__all__:
        assert getattr(api, name) is not None, name
    assert api.ActorCritic.__module__ == "mario_cli.policy"
    assert api.RolloutBatch.__module__ == "mario_cli.training.rollout"


def test_the_boundary_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    sample = tmp_path / "plugin.py"
    sample.write_text("def f():\n    from mario_cli.training.rollout import RolloutBatch\n")
    assert imported_modules(sample) == [(2, "mario_cli.training.rollout")]
