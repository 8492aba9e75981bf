"""One settings-to-CLI builder for every command of the project.

A component's settings are one frozen dataclass. Each field is one `--flag` (underscores become
dashes) with its help, choices and metavar from the field's metadata (`opt(...)`; `positional=True`
makes it an argument instead of a flag) and its default in the help; a bool is `--x/--no-x`;
`list[X]` is a repeatable flag. With an `env_prefix`, each field can also be set as
the variable `<PREFIX><FIELD>` (command line, then environment, then the default; scalar fields
only: a list field takes no variable). A bad flag or
value exits 2 with one line naming the problem, never usage plus a trace.
"""

from __future__ import annotations

import argparse
import os
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, Field, fields, is_dataclass
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def opt(help: str, **extra: Any) -> dict[str, Any]:
    """Field metadata: `field(default=..., metadata=opt("what it does", choices=(...)))`."""
    return {"help": help, **extra}


class OneLineParser(argparse.ArgumentParser):
    """argparse prints usage plus the error; we print one line: `<prefix>error: <problem>`.

    `name_errors=True` starts the line with the program's name (`exporter: error: ...`), as the
    exporter and the demo always have; the server and the trainer's tools print `error: ...`.
    """

    def __init__(self, *args: Any, name_errors: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.name_errors = name_errors

    def error(self, message: str) -> NoReturn:
        prefix = f"{self.prog}: " if self.name_errors else ""
        self.exit(2, f"{prefix}error: {message}\n")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(prefix: str, name: str) -> str:
    return prefix + name.upper()


def parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def _unwrap(kind: Any) -> tuple[Any, bool]:
    """(element type, repeatable) of a field type: `X | None` is X, `list[X]` is X repeatable."""
    origin = typing.get_origin(kind)
    if origin in (list, tuple):
        return typing.get_args(kind)[0], True
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if args and origin is not None:
        return _unwrap(args[0])
    return kind, False


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def add_fields(
    parser: argparse.ArgumentParser,
    config_cls: type,
    *,
    env_prefix: str = "",
    env: Mapping[str, str] | None = None,
    skip: Sequence[str] = (),
) -> None:
    """Add one flag per field of the dataclass `config_cls` (but those in `skip`)."""
    if not is_dataclass(config_cls):
        raise TypeError(f"{config_cls!r} is not a dataclass")
    env = os.environ if env is None else env
    hints = typing.get_type_hints(config_cls)
    for f in fields(config_cls):
        if f.name in skip:
            continue
        kind, repeatable = _unwrap(hints[f.name])
        default = _default(f)
        variable = env_name(env_prefix, f.name) if env_prefix else ""
        if variable and variable in env and not repeatable:
            raw = env[variable]
            try:
                default = parse_bool(raw) if kind is bool else kind(raw)
            except ValueError as exc:
                parser.error(f"{variable}={raw!r}: {exc}")
        help_text = str(f.metadata.get("help", ""))
        if variable:
            help_text = f"{help_text} (env {variable}; default: {None if default is MISSING else default})"
        elif kind is not bool and default is not MISSING and default is not None and default != []:
            help_text = f"{help_text} (default: {default})"  # argparse adds it for --x/--no-x itself
        if f.metadata.get("positional"):
            optional = {} if default is MISSING else {"nargs": "?", "default": default}
            parser.add_argument(f.name, type=kind, help=help_text, metavar=f.name.upper(), **optional)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "help": help_text}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if "metavar" in f.metadata or "choices" not in f.metadata:  # choices show as {a,b,c}
                kwargs["metavar"] = f.metadata.get("metavar", f.name.upper())
            if repeatable:
                kwargs["action"] = "append"
        if default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = [] if repeatable else default
        parser.add_argument(flag(f.name), **kwargs)


def build_parser(
    config_cls: type,
    *,
    prog: str,
    description: str | None = None,
    env_prefix: str = "",
    env: Mapping[str, str] | None = None,
    name_errors: bool = False,
) -> OneLineParser:
    """A parser with one flag per field of `config_cls` (its docstring's first line as description)."""
    if description is None:
        description = (config_cls.__doc__ or "").strip().splitlines()[0] if config_cls.__doc__ else ""
    parser = OneLineParser(prog=prog, description=description, name_errors=name_errors)
    add_fields(parser, config_cls, env_prefix=env_prefix, env=env)
    return parser


def from_namespace(
    parser: argparse.ArgumentParser, config_cls: type[T], namespace: argparse.Namespace, **extra: Any
) -> T:
    """`config_cls(**namespace)`; a value its checks refuse (ValueError) exits 2 with one line."""
    names = {f.name for f in fields(config_cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in vars(namespace).items() if k in names}
    try:
        return config_cls(**values, **extra)
    except ValueError as exc:
        parser.error(str(exc))


def parse_settings(
    config_cls: type[T],
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str | None = None,
    env_prefix: str = "",
    env: Mapping[str, str] | None = None,
    name_errors: bool = False,
) -> T:
    """Parse argv (and the environment, with `env_prefix`) into `config_cls`."""
    parser = build_parser(
        config_cls, prog=prog, description=description, env_prefix=env_prefix, env=env, name_errors=name_errors
    )
    return from_namespace(parser, config_cls, parser.parse_args(argv))


def fail(prog: str, message: str, code: int = 2) -> int:
    """Print one error line for a problem found after parsing; return the exit status."""
    print(f"{prog}: error: {message}" if prog else f"error: {message}", file=sys.stderr)
    return code


__all__ = [
    "OneLineParser",
    "add_fields",
    "build_parser",
    "env_name",
    "fail",
    "flag",
    "from_namespace",
    "opt",
    "parse_bool",
    "parse_settings",
]
