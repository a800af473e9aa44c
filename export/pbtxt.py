"""A small writer of protobuf text format, enough for Triton's config.pbtxt.

Configs are built as plain dicts and lists (readable, diffable, testable) and rendered here, so no
protobuf dependency is needed to write them. `Enum("TYPE_FP32")` marks a bare enum value.
"""

from __future__ import annotations

from typing import Any


class Enum(str):
    """An enum constant: written without quotes."""


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"cannot write {type(value).__name__} {value!r} to pbtxt")


def _field(name: str, value: Any, indent: int) -> list[str]:
    pad = "  " * indent
    if isinstance(value, dict):
        return [f"{pad}{name} {{", *_message(value, indent + 1), f"{pad}}}"]
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            items = ", ".join(_scalar(v) for v in value)
            return [f"{pad}{name}: [ {items} ]" if items else f"{pad}{name}: []"]
        return [line for item in value for line in _field(name, item, indent)]
    return [f"{pad}{name}: {_scalar(value)}"]


def _message(message: dict[str, Any], indent: int) -> list[str]:
    return [line for name, value in message.items() for line in _field(name, value, indent)]


def render(config: dict[str, Any]) -> str:
    """A config dict as config.pbtxt text; lists of dicts become repeated blocks."""
    return "\n".join(_message(config, 0)) + "\n"


def parameters(values: dict[str, str]) -> list[dict[str, Any]]:
    """Triton's string-valued `parameters` map as repeated key/value blocks."""
    return [{"key": k, "value": {"string_value": str(v)}} for k, v in values.items()]
