"""Field types shared by the request, response and config models, and the one place a pydantic
``ValidationError`` becomes an ``InvalidRequest`` naming the field.

Each type carries its JSON Schema (what the OpenAPI document and ``docs/config.md`` show) next
to its validator, so what is documented and what is accepted cannot drift apart.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    WithJsonSchema,
)

from ..errors import InvalidRequest, Reason
from ..units import MAX_SIZE, parse_size

#: ``name`` of a sandbox: also its hostname inside
NAME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"
#: a sandboxd user name: also part of cgroup paths and volume directories
USER_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,31}$"
#: a sandbox reference in a path: id, unique id prefix or name
REF_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
#: a user's network name
NETWORK_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,31}$"
#: a user's volume name
VOLUME_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$"
#: an environment variable name
ENV_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,255}$"
#: sizes as users type them: bytes, or a number with k/m/g/t (optionally b/ib)
SIZE_PATTERN = r"^\s*[0-9]+(\.[0-9]+)?\s*[kmgtKMGT]?([iI]?[bB])?\s*$"

SAFE_STRING_MAX = 4096


class Model(BaseModel):
    """Base of every shape: unknown fields are refused, instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Query(Model):
    """Base of query strings: other arguments (``token``, a cache buster) are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)


M = TypeVar("M", bound=BaseModel)


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif str(part).startswith(("function-", "union[", "json-or-python")):
            continue  # pydantic's internal validator names, not the user's keys
        else:
            out += f".{part}" if out else str(part)
    return out


def first_error(exc: ValidationError) -> tuple[str, str]:
    """(key, why) of the first error: ``("memory", "'lots' is not a size (use e.g. 512m, 1g)")``."""
    err = exc.errors(include_url=False)[0]
    why = str(err["msg"]).removeprefix("Value error, ").replace("valid tuple", "valid list")
    if err["type"] == "extra_forbidden":
        why = "unknown field"
    elif err["type"] == "missing":
        why = "required"
    return _where(tuple(err["loc"])), why


def validate(model: type[M], data: Any, reason: Reason = Reason.INVALID) -> M:
    """``data`` as ``model``, or a 400 naming the field (``reasons`` of the model refine it)."""
    if not isinstance(data, dict):
        raise InvalidRequest("expected a JSON object", reason=reason)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        key, why = first_error(exc)
        field = key.split(".", 1)[0].split("[", 1)[0]
        refined = getattr(model, "reasons", {}).get(field, reason)
        raise InvalidRequest(f"{key}: {why}" if key else why, reason=refined) from None


# --- value types --------------------------------------------------------------------------------


def _size(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a size like 512m or a number of bytes, got {value!r}")
    try:
        return parse_size(value)
    except InvalidRequest as exc:
        raise ValueError(exc.message.removeprefix("size: ")) from None


def size(least: int = 0) -> Any:
    """Bytes, written ``512m``/``1g``/``64k`` or as an integer; at least ``least``."""

    def check(value: int) -> int:
        if value < least:
            raise ValueError(f"must be at least {least} bytes")
        return value

    return Annotated[
        int,
        BeforeValidator(
            _size,
            json_schema_input_type=Annotated[int, Field(ge=least, le=MAX_SIZE)]
            | Annotated[str, Field(pattern=SIZE_PATTERN, max_length=32)],
        ),
        AfterValidator(check),
    ]


Size = size()


#: 0.01 and up, as a string
CPUS_STRING = r"^([1-9][0-9]{0,3}(\.[0-9]{1,6})?|0\.[1-9][0-9]{0,5}|0\.0[1-9][0-9]{0,4})$"


def _number(value: Any) -> float:
    """A number, or a string holding one (``KERNEL_CPUS`` arrives as a string)."""
    if isinstance(value, bool):
        raise ValueError("expected a number")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{value[:32]!r} is not a number") from None
    if not isinstance(value, (int, float)):
        raise ValueError("expected a number")
    if not math.isfinite(value) or value < 0.01:
        raise ValueError("must be at least 0.01")
    return float(value)


#: cpus: a positive number (or a numeric string)
Cpus = Annotated[
    float,
    BeforeValidator(
        _number,
        json_schema_input_type=Annotated[float, Field(ge=0.01, le=1024)]
        | Annotated[str, Field(pattern=CPUS_STRING)],
    ),
]
#: a positive number of seconds or cores, as configured (no strings)
PositiveFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegativeFloat = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _integer(value: Any) -> Any:
    """JSON's integers: ``8`` and ``8.0`` (never ``true`` or ``"8"``)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def count(least: int = 0) -> Any:
    return Annotated[StrictInt, Field(ge=least), BeforeValidator(_integer)]


def _no_nul(value: str) -> str:
    if "\0" in value:
        raise ValueError("must not contain NUL bytes")
    return value


NO_NUL = r"^[^\x00]*$"
#: a string a sandbox's process may see (argv, env values): no NUL byte
Text = Annotated[
    str, AfterValidator(_no_nul), WithJsonSchema({"type": "string", "pattern": NO_NUL})
]


def _absolute(value: str) -> str:
    if not os.path.isabs(value) or ".." in value.split("/"):
        raise ValueError(f"{value!r} must be an absolute path without '..'")
    return value


AbsolutePath = Annotated[
    str,
    Field(pattern=r"^/", max_length=SAFE_STRING_MAX),
    AfterValidator(_no_nul),
    AfterValidator(_absolute),
]
Bool = StrictBool
