"""``mario plugins``: every registered component by kind, with its plugin."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from mario_cli.cli.console import console
from mario_cli.config import component_flag, table_name
from mario_cli.plugins import KIND_SECTIONS, KINDS, Component, get_host


def _options(kind: str, component: Component) -> str:
    """The component's own options, as its table and flags."""
    settings = component.settings
    if settings is None:
        return ""
    parts = [component_flag(component.name, key) for key in settings.model_fields]
    if settings.model_fields:
        parts.insert(0, f"[{KIND_SECTIONS[kind]}.{table_name(component.name)}]")
    parts += [f"{key} = {value!r}" for key, value in settings.section_defaults.items()]
    return " ".join(parts)


def plugins(
    as_json: bool = typer.Option(False, "--json", help="One JSON object keyed by kind."),
) -> None:
    """List registered wrappers, backbones, cores, algorithms, replay, hints and commands."""
    host = get_host()
    listing: dict[str, list[dict[str, str]]] = {
        kind: [
            {"name": c.name, "plugin": c.plugin, "options": _options(kind, c)} for c in host[kind]
        ]
        for kind in KINDS
    }
    listing["commands"] = [
        {"name": c.name, "plugin": c.plugin, "options": ""} for c in host.command_plugins()
    ]
    if as_json:
        print(json.dumps(listing, indent=2))
        return
    table = Table(title="mario plugins", show_lines=False)
    table.add_column("kind", style="bold cyan")
    table.add_column("name")
    table.add_column("plugin", style="dim")
    table.add_column("own options and defaults")
    for kind, items in listing.items():
        if not items:
            table.add_row(kind, "[dim](none yet)[/]", "", "")
        for i, item in enumerate(items):
            options = item["options"].replace("[", "\\[")
            table.add_row(kind if i == 0 else "", item["name"], item["plugin"], options)
    console.print(table)
