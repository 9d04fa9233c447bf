"""The shared machinery of the command contracts: a strict settings model, its error messages and its help.

Every ``battgen <command>`` declares its settings once, as a subclass of :class:`CommandSettings` (pydantic v2,
``extra="forbid"``, strict types: no ``"5"`` for 5, no ``True`` for 1). Each field carries a description, its
unit (``json_schema_extra={"unit": ...}``, via :func:`setting`) and its range as constraints. The science
command validates its config with :meth:`CommandSettings.from_config` (raises ``InvalidInputError``); the
CalcJob's port validator calls :meth:`CommandSettings.parameters_error` at submit time and builds its port
help with :meth:`CommandSettings.help`. Fields the job writes itself (input file names, restart switches) are
marked ``set_by_job`` and refused as user parameters.

Imports only pydantic and the standard library: the AiiDA layer imports this package (no torch, no ASE).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticUndefined

from battgen.errors import InvalidInputError

# Where a CalcJob puts the directory of a ``battgen.model`` node in the job's working directory.
MODEL_DIRNAME = "model"

_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_TYPE_WORDS = {
    "int_type": "an integer", "int_from_float": "an integer", "int_parsing": "an integer",
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "bool_type": "true or false", "bool_parsing": "true or false", "string_type": "a string",
    "list_type": "a list", "dict_type": "a mapping", "none_required": "null",
}


def setting(default: Any = PydanticUndefined, description: str = "", unit: str | None = None, *,
            set_by_job: bool = False, **constraints: Any) -> Any:
    """A settings field: default, description, unit (None for counts, switches, names) and constraints."""
    extra: dict[str, Any] = {"unit": unit}
    if set_by_job:
        extra["set_by_job"] = True
    return Field(default, description=description, json_schema_extra=extra, **constraints)


def _bounds(field) -> dict[str, float]:
    bounds: dict[str, float] = {}
    for item in field.metadata:
        for name in ("gt", "ge", "lt", "le"):
            value = getattr(item, name, None)
            if value is not None:
                bounds[name] = value
    return bounds


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def range_text(field, integer: bool = False) -> str:
    """``positive``, ``non-negative``, ``>= 2``, ``in (0, 1]`` ... from a field's constraints ('' without)."""
    bounds = _bounds(field)
    noun = "integer" if integer else "number"
    lower = bounds.get("gt", bounds.get("ge"))
    upper = bounds.get("lt", bounds.get("le"))
    if upper is None:
        if lower is None:
            return ""
        if lower == 0:
            return f"a positive {noun}" if "gt" in bounds else f"a non-negative {noun}"
        if integer and "ge" in bounds and lower == 1:
            return "a positive integer"
        return f"a {noun} {'>' if 'gt' in bounds else '>='} {_number(lower)}"
    if lower is None:
        return f"a {noun} {'<' if 'lt' in bounds else '<='} {_number(upper)}"
    return (f"in {'(' if 'gt' in bounds else '['}{_number(lower)}, {_number(upper)}"
            f"{')' if 'lt' in bounds else ']'}")


def _is_integer_field(field) -> bool:
    return "int" in repr(field.annotation) and "float" not in repr(field.annotation)


class CommandSettings(BaseModel):
    """Settings of one ``battgen`` command. Subclasses set ``COMMAND`` and declare fields with :func:`setting`."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=False)

    COMMAND: ClassVar[str] = ""

    # --- introspection --------------------------------------------------------------------------------
    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting with its default (the science command's ``*_DEFAULTS``)."""
        return {name: field.get_default(call_default_factory=True) for name, field in cls.model_fields.items()}

    @classmethod
    def job_fields(cls) -> set[str]:
        """Settings the CalcJob writes itself (not user parameters)."""
        return {name for name, field in cls.model_fields.items()
                if (field.json_schema_extra or {}).get("set_by_job")}

    @classmethod
    def parameter_fields(cls) -> list[str]:
        """Settings a user may give as the CalcJob's ``parameters``."""
        return [name for name in cls.model_fields if name not in cls.job_fields()]

    @classmethod
    def unit(cls, name: str) -> str | None:
        return (cls.model_fields[name].json_schema_extra or {}).get("unit")

    @classmethod
    def help(cls, fields: list[str] | None = None) -> str:
        """One line per setting for a port's help: ``key (unit; range; default d): description``."""
        parts = []
        for name in fields if fields is not None else cls.parameter_fields():
            field = cls.model_fields[name]
            bits = [b for b in (cls.unit(name), range_text(field, _is_integer_field(field))) if b]
            if not field.is_required():
                bits.append(f"default {field.get_default(call_default_factory=True)!r}")
            parts.append(f"{name} ({'; '.join(bits)}): {field.description}" if bits else f"{name}: {field.description}")
        return "; ".join(parts)

    # --- validation -----------------------------------------------------------------------------------
    @classmethod
    def errors(cls, config: Mapping[str, Any], prefix: str = "") -> list[str]:
        """Human messages for everything wrong with ``config`` (empty: valid). Keys are dotted with ``prefix``."""
        if not isinstance(config, Mapping):
            return [f"{prefix or cls.COMMAND + ' config'} must be a mapping, got {type(config).__name__}"]
        try:
            cls.model_validate(dict(config))
        except ValidationError as exc:
            return cls._messages(exc, prefix)
        return []

    @classmethod
    def from_config(cls, config: Mapping[str, Any]):
        """The validated settings of the science command; raises ``InvalidInputError`` naming the bad key."""
        messages = cls.errors(config)
        if messages:
            raise InvalidInputError("; ".join(messages))
        return cls.model_validate(dict(config))

    @classmethod
    def settings_dict(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """:meth:`from_config` as a plain dict with every default filled in."""
        return cls.from_config(config).model_dump()

    @classmethod
    def parameters_error(cls, parameters: Mapping[str, Any], prefix: str = "parameters",
                         job_values: Mapping[str, Any] | None = None) -> str | None:
        """Port validator body: the CalcJob's ``parameters`` (plus what the job writes, ``job_values``)."""
        job_set = sorted(set(parameters) & cls.job_fields())
        if job_set:
            return f"{', '.join(f'{prefix}.{key}' for key in job_set)}: set by the job, not a parameter"
        messages = cls.errors({**(job_values or {}), **parameters}, prefix)
        return "; ".join(messages) or None

    @classmethod
    def _messages(cls, exc: ValidationError, prefix: str) -> list[str]:
        unknown, messages, seen = [], [], set()
        for error in exc.errors():
            loc = error["loc"]
            if error["type"] == "extra_forbidden" and len(loc) == 1:
                unknown.append(loc[0])
                continue
            top = loc[0] if loc else None
            if top in seen:  # one message per setting (unions report one error per member)
                continue
            seen.add(top)
            messages.append(cls._message(error, prefix))
        if unknown:
            what = f"parameter(s) {sorted(unknown)} in `{prefix}`" if prefix else f"{cls.COMMAND} setting(s) {sorted(unknown)}"
            allowed = cls.parameter_fields() if prefix else list(cls.model_fields)
            messages.insert(0, f"unknown {what}; allowed: {sorted(allowed)}")
        return messages

    @classmethod
    def _message(cls, error: dict[str, Any], prefix: str) -> str:
        loc = [str(part) for part in error["loc"] if not _is_union_tag(part)]
        key = ".".join([prefix, *loc] if prefix else loc) or (prefix or cls.COMMAND)
        value = error.get("input")
        kind = error["type"]
        field = cls.model_fields.get(loc[0]) if loc else None
        if kind == "missing":
            return f"{key} is required"
        if kind == "value_error" or (kind == "assertion_error"):
            text = str(error.get("ctx", {}).get("error", error["msg"]))
            return text if not loc else f"{key}: {text}"
        unit = cls.unit(loc[0]) if field is not None and len(loc) == 1 else None
        unit_text = f" ({unit})" if unit else ""
        if kind in _RANGE_ERRORS and field is not None and len(loc) == 1:
            return f"{key} must be {range_text(field, _is_integer_field(field))}{unit_text}, got {value!r}"
        if kind in _RANGE_ERRORS:
            return f"{key}: {error['msg'].lower()}, got {value!r}"
        if (kind in _TYPE_WORDS or kind == "literal_error") and field is not None and len(loc) == 1 \
                and _is_union(field):
            return f"{key} must be {_annotation_text(field)}{unit_text}, got {value!r}"
        if kind == "literal_error":
            return f"{key} must be one of {error['ctx']['expected']}, got {value!r}"
        if kind in _TYPE_WORDS:
            got = "a bool" if isinstance(value, bool) else repr(value)
            return f"{key} must be {_TYPE_WORDS[kind]}{unit_text}, got {got}"
        return f"{key}: {error['msg']}, got {value!r}"


def _is_union_tag(part: Any) -> bool:
    # pydantic names the union member that failed ('float', 'none', 'literal[...]', 'dict[str,float]')
    return isinstance(part, str) and (part in ("none", "str", "int", "float", "bool", "list", "dict")
                                      or "[" in part or part.startswith(("function-", "literal")))


def _is_union(field) -> bool:
    return "|" in repr(field.annotation) or "Union" in repr(field.annotation) or "Optional" in repr(field.annotation)


_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false", type(None): "null",
          list: "a list", dict: "a mapping"}


def _annotation_text(field) -> str:
    """``float | None`` -> ``a number or null``; ``Literal['a'] | dict[str, float]`` -> ``'a' or a mapping``."""
    words = []
    for member in get_args(field.annotation) or (field.annotation,):
        origin = get_origin(member) or member
        if origin is Literal:
            words.extend(repr(value) for value in get_args(member))
        else:
            words.append(_WORDS.get(origin, getattr(origin, "__name__", str(origin))))
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def element_symbol(value: str | None) -> str | None:
    """Field-validator body: ``value`` must be an element symbol (None passes; pymatgen is imported lazily)."""
    from pymatgen.core import Element

    if value is not None and not Element.is_valid_symbol(value):
        raise ValueError(f"must be an element symbol, got {value!r}")
    return value


def finite(value: float, name: str) -> float:
    """Reject inf/NaN (pydantic's ``allow_inf_nan=False`` as a plain check for model validators)."""
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return value
