"""The command line's options, each declared once: its flags, type, default, help, and the
MAGRPOConfig field it sets. A command's typer parameters and its flags' config values are both
made from these declarations (``command``, ``config_values``), and an option that sets a field
says what that field's own ``#:`` comment in config.py says, unless it has better words of its own.

Only light modules are imported here: ``--help`` loads neither torch nor transformers.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable, Optional, Sequence

import typer
import yaml
from rich.markup import escape

from magrpo.config import MAGRPOConfig, field_help

#: the end of a comment's first sentence: a full stop after a word, not the one of "e.g." or "i.e."
_SENTENCE_END = re.compile(r"(?<=[\w)\"'])(?<!e\.g)(?<!i\.e)\.\s")


def one_line(text: str, width: int = 90) -> str:
    """The first sentence of ``text``, cut at a word to at most ``width`` characters (then ending in ...)."""
    first = _SENTENCE_END.split(text, maxsplit=1)[0]
    first = first if first.endswith("...") else first.removesuffix(".")
    if len(first) <= width:
        return first
    cut = first[: width - 3].rsplit(" ", 1)[0].rstrip(",;:")  # room for " ...", a word ending there kept
    return cut if cut.endswith("...") else cut + " ..."


def as_sentence(text: str) -> str:
    """A field's help as an option's: a capital first letter and a full stop."""
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def yaml_value(value: Any) -> str:
    """``value`` as one would write it after ``--set FIELD=`` (YAML's flow style)."""
    return yaml.safe_dump(value, default_flow_style=True, width=math.inf).removesuffix("\n...\n").strip()


@dataclass(frozen=True)
class Option:
    """One option of a command. ``flags[0]`` names it (``--eval-items``: ``eval_items``, the
    attribute its value is read by); ``help`` None takes the help of the config ``field`` it sets;
    ``to_field`` turns a given value into the field's (a Path into its str, say)."""

    flags: tuple[str, ...]
    type: Any = Optional[str]
    default: Any = None
    help: Optional[str] = None
    field: Optional[str] = None
    to_field: Optional[Callable[[Any], Any]] = None
    min: Optional[int] = None
    hidden: bool = False

    @property
    def name(self) -> str:
        return self.flags[0].split("/")[0].lstrip("-").replace("-", "_")

    def help_text(self) -> Optional[str]:
        if self.help is None and self.field is not None:
            return escape(as_sentence(field_help()[self.field]))
        return self.help

    def parameter(self) -> inspect.Parameter:
        """The typer parameter of this option, as a keyword of the command's function."""
        info = typer.Option(self.default, *self.flags, help=self.help_text(), min=self.min, hidden=self.hidden)
        return inspect.Parameter(self.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=self.type)


def command(app: typer.Typer, name: str, options: Sequence[Option], **settings: Any) -> Callable:
    """A decorator that makes ``body(given)`` the command ``name`` of ``app`` with these options:
    typer reads the signature made from them, and ``body`` gets their values as attributes of
    ``given`` (None: not given). ``settings`` go to ``app.command`` (an epilog, say)."""

    def register(body: Callable[[SimpleNamespace], None]) -> Callable[[SimpleNamespace], None]:
        def run(**values: Any) -> None:
            body(SimpleNamespace(**values))

        run.__signature__ = inspect.Signature([option.parameter() for option in options])
        run.__name__, run.__doc__ = body.__name__, body.__doc__
        app.command(name, **settings)(run)
        return body

    return register


def config_values(options: Sequence[Option], given: SimpleNamespace) -> dict[str, Any]:
    """The config fields these options set, from their values in ``given``: {field: value} (None: not given)."""
    values: dict[str, Any] = {}
    for option in options:
        if option.field is not None:
            value = getattr(given, option.name)
            values[option.field] = option.to_field(value) if value is not None and option.to_field else value
    return values


def config_fields_epilog(options: Sequence[Option]) -> str:
    """The end of a command's help: what ``--set`` takes, then every config field with its default,
    the first sentence of its help and the flag that sets it, if one does."""
    flag_of = {option.field: option.flags[0] for option in options if option.field is not None}
    lines = []
    for f in dataclasses.fields(MAGRPOConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = f" ({flag_of[f.name]})" if f.name in flag_of else ""
        lines.append(f"[bold]{f.name}[/]={escape(yaml_value(default))}{flag}  {escape(one_line(field_help()[f.name]))}")
    head = (
        "[bold]Config fields[/]: --set FIELD=VALUE sets any of them (repeatable; a --config YAML file takes the "
        "same fields, and flags win over both). VALUE is read as YAML: "
        + escape("--set use_lora=[true,false], --set autocast=no, --set 'lr_scheduler_kwargs={min_lr_rate: 0.1}'.")
        + " The fields, with their defaults:"
    )
    return head + "\n\n" + "\n".join(lines)
