"""The base of every configuration model: pydantic validation, with a mistake raised as
[`mlo.SetupError`][mlo.errors.SetupError] (one message naming every field at fault and its
value) and
``True``/``False`` refused where a number is expected (pydantic would read them as 1
and 0)."""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError, model_validator

from .errors import SetupError


class NumbersNotBooleans(BaseModel):
    """A pydantic model whose numeric fields refuse ``True`` and ``False``. Models that are
    validated from files (the examples' configurations) use it as it is; pydantic's
    ``ValidationError`` there lists every field at fault, for the caller to report."""

    @model_validator(mode="before")
    @classmethod
    def _booleans_are_not_numbers(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(name, data.get(field.alias) if field.alias else None)
                if isinstance(value, bool) and _numeric(field.annotation):
                    raise ValueError(
                        f"{name} is {value}, a boolean; give a number (booleans are not "
                        "read as 1 and 0)"
                    )
        return data


def _numeric(annotation: Any) -> bool:
    """Whether a field's type takes numbers and not booleans (``int``, ``float``, or either
    or ``None``)."""
    if annotation in (int, float):
        return True
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    if origin is typing.Annotated:
        return _numeric(typing.get_args(annotation)[0])
    return False


def summary(model: str, error: ValidationError) -> str:
    """One line naming every field at fault: ``Model: field: message (got value)``."""
    parts = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a check of the whole model names its fields itself
            parts.append(message)
            continue
        field = ".".join(str(p) for p in item["loc"])
        parts.append(f"{field}: {message} (got {item.get('input')!r:.60})")
    return f"invalid {model}: " + "; ".join(parts)


class Options(NumbersNotBooleans):
    """A configuration built in code: invalid values fail at construction with a
    ``SetupError`` that names the field and the constraint; booleans are not numbers.
    (pydantic calls a model's ``__init__`` when it validates it inside another model, so
    models nested in validated files use ``NumbersNotBooleans`` instead.)"""

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise SetupError(summary(type(self).__name__, error)) from error
