"""The config schema's building blocks, on pydantic v2: typed sections, checked values, and
one-line errors that name the key and what is allowed.

Each config section (``data:``, ``method:``, ``optim:``, ``train:``) is a ``section``: a
pydantic dataclass that refuses unknown keys, so a typo is an error, not a silent default.
Values are checked by their type hints: integers and booleans strictly (``2.5`` is not an
epoch count), floats also from strings (YAML 1.1 reads ``1e-4`` as one), ranges through
``Field`` bounds. ``describe_error`` turns pydantic's report into one line such as
``bad value 0 for 'optim.batch_size'; expected an integer >= 1``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Sequence
from typing import Annotated, Any, Literal, TypeVar

import annotated_types
from pydantic import AfterValidator, ConfigDict, Field, Strict, ValidationError
from pydantic.dataclasses import dataclass as pydantic_dataclass

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is wrong; the message names it and what is allowed."""


def section(cls: type[T] | None = None, *, key: str = "") -> Any:
    """A config section: a validated dataclass that refuses unknown keys. Building one
    directly with a bad value raises a one-line ConfigError naming ``key.field``."""

    def make(plain: type[T]) -> type[T]:
        # allow_inf_nan=False: every float key of every section is finite-checked at load.
        validated = pydantic_dataclass(config=ConfigDict(extra="forbid", allow_inf_nan=False))(
            plain
        )
        checked_init = validated.__init__

        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            try:
                checked_init(self, *args, **kwargs)
            except ValidationError as error:
                raise ConfigError(describe_error(error, validated, prefix=key)) from None

        __init__.__doc__ = checked_init.__doc__
        validated.__init__ = __init__  # type: ignore[method-assign]
        return validated

    return make if cls is None else make(cls)


# Typed values with their allowed ranges; the names say what they hold.
Int = Annotated[int, Strict()]
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]
PositiveInt = Annotated[int, Strict(), Field(ge=1)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
NonNegativeFloat = Annotated[float, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]
"""A number in [0, 1] (probabilities, dropout, momentum)."""


def _one_class_slot(templates: list[str]) -> list[str]:
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(
                f"template {template!r} must hold '{{}}' once, where the class name goes "
                "(without it every class gets the same text)"
            )
    return templates


PromptTemplates = Annotated[list[Str], Field(min_length=1), AfterValidator(_one_class_slot)]
"""Label prompt templates: at least one, each with one ``{}`` for the class name."""


def nearest(name: str, choices: Sequence[str], n: int = 3) -> list[str]:
    """The choices closest to a mistyped ``name`` (difflib's ratio), best first."""
    return difflib.get_close_matches(name, list(choices), n=n, cutoff=0.6)


def did_you_mean(name: str, choices: Sequence[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or an empty string."""
    close = nearest(name, choices, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# --------------------------------------------------------------------------- error messages
def describe_error(error: ValidationError, root: type, prefix: str = "") -> str:
    """One line for the first problem of ``error`` raised while validating ``root``.

    The key is followed through the sections' fields (``optim.lr``); the expectation comes
    from the field's type hint and bounds, so every message has the same shape.
    """
    first = error.errors()[0]
    loc = [part for part in first["loc"] if isinstance(part, (str, int))]
    cls, path, hint = root, [], None
    for part in loc:
        if cls is not None and dataclasses.is_dataclass(cls) and isinstance(part, str):
            hints = typing.get_type_hints(cls, include_extras=True)
            if part not in hints:
                return _unknown_key(cls, [*path, part], prefix)
            path.append(part)
            hint = hints[part]
            inner = _strip(hint)
            cls = inner if dataclasses.is_dataclass(inner) else None
        else:
            break
    key = ".".join([prefix, *path] if prefix else path)
    kind = first["type"]
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return _unknown_key(cls or root, [*path, str(loc[len(path)])], prefix)
    if kind == "value_error" or hint is None:
        message = str(first.get("ctx", {}).get("error", first["msg"]))
        return f"{key or 'config'}: {message}" if key else message
    value = first.get("input")
    if kind == "too_short":
        least = first.get("ctx", {}).get("min_length", 1)
        return f"bad value {value!r} for {key!r}; expected a list of at least {least} item(s)"
    if cls is not None and not isinstance(value, dict):
        return f"bad value {value!r} for {key!r}; expected a mapping of its keys"
    return f"bad value {value!r} for {key!r}; {expectation(hint)}"


def literal_choices(hint: Any) -> tuple[Any, ...] | None:
    """The allowed values of a ``Literal`` hint (None for any other hint)."""
    inner = _strip(hint)
    return typing.get_args(inner) if typing.get_origin(inner) is Literal else None


def _unknown_key(cls: type, path: list[str], prefix: str) -> str:
    fields = [f.name for f in dataclasses.fields(cls)]
    key = ".".join([prefix, *path] if prefix else path)
    where = ".".join([prefix, *path[:-1]] if prefix else path[:-1])
    under = f" under {where!r}" if where else ""
    return (
        f"unknown config key {key!r}; allowed keys{under}: {', '.join(fields)}"
        f"{did_you_mean(path[-1], fields)}"
    )


def _strip(hint: Any) -> Any:
    """The type inside ``Annotated[...]``."""
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _bounds(hint: Any) -> str:
    parts = []
    if typing.get_origin(hint) is Annotated:
        for meta in typing.get_args(hint)[1:]:
            items = getattr(meta, "metadata", [meta])
            for item in items:
                for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                    bound = getattr(item, attr, None)
                    if bound is not None and isinstance(item, annotated_types.BaseMetadata):
                        parts.append(f"{symbol} {bound}")
    return " and ".join(parts)


def expectation(hint: Any) -> str:
    """What a value of type ``hint`` must be, in words (``expected an integer >= 1``)."""
    choices = literal_choices(hint)
    if choices is not None:
        return "allowed values: " + ", ".join(map(repr, choices))
    return "expected " + _describe(hint)


def _describe(hint: Any) -> str:
    bounds = _bounds(hint)
    inner = _strip(hint)
    origin, args = typing.get_origin(inner), typing.get_args(inner)
    if origin is Literal:
        return "one of " + ", ".join(map(repr, args))
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        text = " or ".join(_describe(a) for a in options)
        return f"{text} or null" if type(None) in args else text
    if origin is tuple and args and args[-1] is not Ellipsis:
        return f"{len(args)} items ({', '.join(_describe(a) for a in args)})"
    if origin in (list, tuple):
        return "a list"
    if origin is dict:
        return "a mapping"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}
    text = names.get(inner, getattr(inner, "__name__", str(inner)))
    return f"{text} {bounds}" if bounds else text
