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

from mario_cli.config import SECTIONS

# Sections whose keys become flags of train/resume/tune.
TRAIN_SECTIONS = ("env", "model", "algo", "replay", "train", "ui")
_NONE_WORDS = {"none", "null", "off"}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


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


def _flag_fields(sections: tuple[str, ...]) -> list[tuple[str, str, Any]]:
    fields = []
    seen: dict[str, str] = {}
    for section in sections:
        for name, field in SECTIONS[section].model_fields.items():
            if (section, name) in NO_FLAG:
                continue
            if name in seen:
                raise RuntimeError(f"{_flag(name)} is defined by [{seen[name]}] and [{section}]")
            seen[name] = section
            fields.append((section, name, field))
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
        for section, name, field in fields:
            metavar, is_bool, _ = _describe_type(field.annotation)
            decl = f"{_flag(name)}/--no-{name.replace('_', '-')}" if is_bool else _flag(name)
            option = typer.Option(
                None,
                decl,
                help=field.description,
                metavar=metavar or None,
                rich_help_panel=f"{section} options",
                show_default=False,
            )
            annotation = bool | None if is_bool else str | None
            added.append(
                inspect.Parameter(
                    f"{section}__{name}",
                    inspect.Parameter.KEYWORD_ONLY,
                    default=option,
                    annotation=annotation,
                )
            )

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            overrides: dict[str, dict[str, Any]] = {}
            for section, name, field in fields:
                value = kwargs.pop(f"{section}__{name}", None)
                if value is not None:
                    overrides.setdefault(section, {})[name] = _parse_value(value, field.annotation)
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
