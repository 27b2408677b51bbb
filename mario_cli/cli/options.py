"""CLI flags generated from the config models, so every config key has one flag.

Options default to None: only what the user typed overrides the lower layers.
Values arrive as text and are validated by the config models, so a bad value is
reported in one line naming the flag.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import typer

from mario_cli.config import (
    SECTIONS,
    ensure_components,
    flag_of,
    moved_keys,
    notify,
    plain_keys,
    tables_of,
)

# Sections whose keys become flags of train/resume/tune.
TRAIN_SECTIONS = ("env", "model", "algo", "replay", "repair", "train", "ui", "hints")
_NONE_WORDS = {"none", "null", "off"}


def _describe_type(annotation: Any) -> tuple[str, bool, bool]:
    """(metavar, is_bool, is_optional) for a field annotation."""
    optional = False
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        annotation = args[0]
    if annotation is bool:
        return "", True, optional
    if typing.get_origin(annotation) is Literal:
        return "|".join(str(a) for a in typing.get_args(annotation)), False, optional
    if typing.get_origin(annotation) is list:
        return "A,B,...", False, optional
    names = {int: "INT", float: "FLOAT", str: "TEXT", Path: "PATH"}
    return names.get(annotation, "VALUE"), False, optional


# Keys that are tables, not values: set them in mario.toml.
NO_FLAG = {("tune", "space")}


class FlagField:
    """One flag: where its value goes (``path``), its text and its field. A flag that
    ``replaces`` another is a hidden old spelling that still sets the key."""

    def __init__(
        self, path: tuple[str, ...], flag: str, field: Any, replaces: str | None = None
    ) -> None:
        self.path, self.flag, self.field, self.replaces = path, flag, field, replaces
        self.param = "__".join(path).replace("-", "_").replace(".", "_")
        if replaces is not None:
            self.param = "old__" + flag.removeprefix("--").replace("-", "_")

    @property
    def panel(self) -> str:
        return ".".join(self.path[:-1]) + " options"


def _flag_fields(sections: tuple[str, ...]) -> list[FlagField]:
    """A flag per plain key (``--key``) and per component key (``--<component>-<key>``),
    and the old flag of each key that moved, where its spelling changed."""
    ensure_components()
    fields = []
    for section in sections:
        model = SECTIONS[section]
        for name in plain_keys(section):
            if (section, name) not in NO_FLAG:
                path = (section, name)
                fields.append(FlagField(path, flag_of(path), model.model_fields[name]))
        for component, settings in tables_of(section).items():
            for key, field in settings.model_fields.items():
                path = (section, component, key)
                fields.append(FlagField(path, flag_of(path), field))
    seen: dict[str, FlagField] = {}
    for field in fields:
        other = seen.setdefault(field.flag, field)
        if other is not field:
            raise RuntimeError(
                f"{field.flag} is defined by {'.'.join(other.path)} and {'.'.join(field.path)}"
            )
    by_path = {field.path: field for field in fields}
    for (section, old), path in moved_keys().items():
        new = by_path.get(path)
        old_flag = "--" + old.replace("_", "-")
        if section in sections and new is not None and old_flag not in seen:
            seen[old_flag] = FlagField(path, old_flag, new.field, replaces=new.flag)
            fields.append(seen[old_flag])
    return fields


def _parse_value(raw: Any, annotation: Any) -> Any:
    """Turn flag text into what the config model validates (lists split on commas)."""
    if not isinstance(raw, str):
        return raw
    metavar, _, optional = _describe_type(annotation)
    if optional and raw.strip().lower() in _NONE_WORDS:
        return None
    if metavar == "A,B,...":
        return [part.strip() for part in raw.split(",") if part.strip()]
    return raw


def config_options(sections: tuple[str, ...] = TRAIN_SECTIONS) -> Callable[..., Any]:
    """Add one ``--flag`` per config key of ``sections`` to a Typer command.

    The command receives the typed flags as ``overrides``, a nested dict keyed by
    section, ready for :func:`mario_cli.config.load_config`.
    """
    fields = _flag_fields(sections)

    def decorator(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)
        own = [p for p in signature.parameters.values() if p.name != "overrides"]
        added = []
        for flag in fields:
            metavar, is_bool, _ = _describe_type(flag.field.annotation)
            decl = f"{flag.flag}/--no-{flag.flag.removeprefix('--')}" if is_bool else flag.flag
            option = typer.Option(
                None,
                decl,
                help=flag.field.description,
                metavar=metavar or None,
                rich_help_panel=flag.panel,
                show_default=False,
                hidden=flag.replaces is not None,
            )
            annotation = bool | None if is_bool else str | None
            added.append(
                inspect.Parameter(
                    flag.param,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=option,
                    annotation=annotation,
                )
            )

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides: dict[str, Any] = {}
            for flag in fields:  # the current flags come first: they win over old ones
                value = kwargs.pop(flag.param, None)
                if value is None:
                    continue
                if flag.replaces is not None:
                    notify(
                        f"flag {flag.flag} is now {flag.replaces}; "
                        "the old flag still works in this release"
                    )
                node = overrides
                for part in flag.path[:-1]:
                    node = node.setdefault(part, {})
                node.setdefault(flag.path[-1], _parse_value(value, flag.field.annotation))
            return fn(*args, overrides=overrides, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=own + added)  # type: ignore[attr-defined]
        return wrapper

    return decorator


def config_path_option() -> Any:
    """The ``--config PATH`` option shared by commands that read the config."""
    return typer.Option(
        None,
        "--config",
        "-c",
        help="Config file (default: ./mario.toml if present).",
        show_default=False,
    )
