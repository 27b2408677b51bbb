"""``mario plugins``: every registered component by kind, with its plugin."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from mario_cli.cli.console import console
from mario_cli.plugins import KINDS, get_host


def plugins(
    as_json: bool = typer.Option(False, "--json", help="One JSON object keyed by kind."),
) -> None:
    """List registered wrappers, backbones, cores, algorithms, replay, hints and commands."""
    host = get_host()
    listing: dict[str, list[dict[str, str]]] = {
        kind: [{"name": c.name, "plugin": c.plugin} for c in host[kind]] for kind in KINDS
    }
    listing["commands"] = [{"name": c.name, "plugin": c.plugin} for c in host.command_plugins()]
    if as_json:
        print(json.dumps(listing, indent=2))
        return
    table = Table(title="mario plugins", show_lines=False)
    table.add_column("kind", style="bold cyan")
    table.add_column("name")
    table.add_column("plugin", style="dim")
    for kind, items in listing.items():
        if not items:
            table.add_row(kind, "[dim](none yet)[/]", "")
        for i, item in enumerate(items):
            table.add_row(kind if i == 0 else "", item["name"], item["plugin"])
    console.print(table)
