"""``mario config show``: the resolved configuration."""

import json
from pathlib import Path

import typer
from rich.syntax import Syntax

from mario_cli.cli.console import console
from mario_cli.cli.options import config_options, config_path_option
from mario_cli.config import commented_defaults, load_config, to_toml
from mario_cli.errors import MarioError

app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)


@app.command("show")
@config_options()
def show(
    config: Path | None = config_path_option(),
    as_json: bool = typer.Option(False, "--json", help="One JSON object keyed by section."),
    overrides: dict | None = None,
) -> None:
    """Print the config after defaults < mario.toml < MARIO_* env vars < flags."""
    cfg = load_config(config, overrides)
    data = cfg.to_dict()
    if as_json:
        print(json.dumps(data, indent=2))
    else:
        console.print(Syntax(to_toml(data), "toml", theme="ansi_dark", background_color="default"))


@app.command("init")
def init(
    path: Path = typer.Argument(Path("mario.toml"), help="Where to write the file."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
) -> None:
    """Write the defaults as a commented mario.toml to edit."""
    if path.exists() and not force:
        raise MarioError(f"{path} exists; pass --force to overwrite it")
    try:
        path.write_text(commented_defaults() + "\n")
    except OSError as exc:
        raise MarioError(f"cannot write {path}: {exc.strerror}") from None
    console.print(f"wrote {path}")
