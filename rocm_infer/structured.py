"""Structured output that fails closed: a schema in, a validated value out, or an error.

:class:`OutputSchema` is made from a pydantic model class (pydantic is
optional: rocm_infer's ``structured`` extra) or a JSON-schema dict. It gives
the JSON schema llama-server turns into a grammar, and at the end of a
generation parses the text: a pydantic instance, or the dict validated
against the schema by :func:`validate`, a small validator for the subset of
JSON Schema that llama.cpp's grammar converter supports (types, properties,
required, additionalProperties, items and prefixItems, enum and const,
string and array lengths, numeric bounds, pattern, anyOf/oneOf/allOf, local
``$ref``). Output cut off by the token limit, text that is not JSON, or JSON
that does not validate is a :class:`~rocm_infer.errors.StructuredOutputError`
carrying the text and the reason; never a partial object.

Why a validator of its own rather than the ``jsonschema`` package: the server
already constrains the output to the schema, so the check only has to catch
what a grammar cannot promise (an output cut short, a server that ignored the
schema); the subset above covers every keyword the converter turns into
grammar rules, with no dependency and no import cost.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any

from .errors import StructuredOutputError

__all__ = ["OutputSchema", "validate"]


class OutputSchema:
    """A schema a generation's output must satisfy: a pydantic model class or a JSON-schema dict."""

    __slots__ = ("schema", "name", "_model")

    def __init__(self, schema: Any) -> None:
        self._model: Any
        self.schema: dict[str, Any]
        self.name: str
        if isinstance(schema, OutputSchema):
            self.schema, self.name, self._model = schema.schema, schema.name, schema._model
            return
        json_schema = getattr(schema, "model_json_schema", None)
        if isinstance(schema, type) and callable(json_schema):  # a pydantic model class
            self._model = schema
            self.schema = json_schema()
            self.name = schema.__name__
        elif isinstance(schema, Mapping):
            self._model = None
            self.schema = dict(schema)
            self.name = str(schema.get("title") or "output")
        else:
            raise TypeError(f"a schema must be a pydantic model class or a JSON-schema dict, not {schema!r}")
        if not isinstance(self.schema, dict) or not self.schema:
            raise ValueError(f"the schema must be a non-empty JSON-schema object, got {schema!r}")

    def __repr__(self) -> str:
        return f"OutputSchema({self.name!r})"

    def response_format(self) -> dict[str, Any]:
        """The chat request's ``response_format`` in the shape llama-server enforces.

        (It accepts ``{"type": "json_schema", "schema": ...}`` too, but then
        enforces nothing: only the ``json_schema`` wrapper is read.)
        """
        return {"type": "json_schema", "json_schema": {"name": _name(self.name), "schema": self.schema, "strict": True}}

    def parse(self, text: str, finish_reason: str | None) -> Any:
        """The value ``text`` holds; StructuredOutputError for a cut, unparsable or invalid output."""
        if finish_reason == "length":
            raise StructuredOutputError("the output was cut off by max_tokens before it was complete", text, "length")
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise StructuredOutputError(f"the output is not JSON: {exc}", text, "not_json") from None
        if self._model is not None:
            try:
                return self._model.model_validate(value)
            except ValueError as exc:  # pydantic's ValidationError is a ValueError
                raise StructuredOutputError(f"the output does not fit {self.name}: {exc}", text, "invalid") from exc
        problems = validate(value, self.schema)
        if problems:
            raise StructuredOutputError(
                f"the output does not fit the schema: {'; '.join(problems[:5])}", text, "invalid"
            )
        return value


def _name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_-]", "_", name)[:64]
    return cleaned or "output"


_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _is_type(value: Any, kind: str) -> bool:
    if kind == "integer":
        return (
            isinstance(value, int) and not isinstance(value, bool) or (isinstance(value, float) and value.is_integer())
        )
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    expected = _TYPES.get(kind)
    return expected is not None and isinstance(value, expected)


def validate(value: Any, schema: Any, *, root: Any = None, at: str = "$") -> list[str]:
    """What is wrong with ``value`` under ``schema`` (empty: it fits); see the module docs for the subset."""
    root = root if root is not None else schema
    if schema is True or schema == {}:
        return []
    if schema is False or not isinstance(schema, Mapping):
        return [f"{at}: no value is allowed here"]
    problems: list[str] = []
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = _resolve(root, ref)
        if target is None:
            return [f"{at}: cannot resolve $ref {ref!r}"]
        problems += validate(value, target, root=root, at=at)
    if "const" in schema and value != schema["const"]:
        problems.append(f"{at}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        problems.append(f"{at}: {value!r} is not one of {schema['enum']!r}")
    kind = schema.get("type")
    if kind is not None:
        kinds = kind if isinstance(kind, list) else [kind]
        if not any(_is_type(value, k) for k in kinds):
            return [*problems, f"{at}: {value!r} is not of type {kind}"]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list):
            fits = sum(not validate(value, option, root=root, at=at) for option in options)
            if fits == 0 or (key == "oneOf" and fits > 1):
                problems.append(f"{at}: {value!r} fits {fits} of the {key} options")
    for option in schema.get("allOf", ()):
        problems += validate(value, option, root=root, at=at)
    if isinstance(value, dict):
        problems += _object(value, schema, root, at)
    elif isinstance(value, list):
        problems += _array(value, schema, root, at)
    elif isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", math.inf):
            problems.append(f"{at}: {value!r} has a length outside the schema's bounds")
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and re.search(pattern, value) is None:
            problems.append(f"{at}: {value!r} does not match {pattern!r}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        problems += _number(value, schema, at)
    return problems


def _object(value: dict[str, Any], schema: Mapping[str, Any], root: Mapping[str, Any], at: str) -> list[str]:
    problems = [f"{at}: '{name}' is required" for name in schema.get("required", ()) if name not in value]
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for name, item in value.items():
        if name in properties:
            problems += validate(item, properties[name], root=root, at=f"{at}.{name}")
        elif extra is False:
            problems.append(f"{at}: '{name}' is not an allowed property")
        elif isinstance(extra, Mapping):
            problems += validate(item, extra, root=root, at=f"{at}.{name}")
    return problems


def _array(value: list[Any], schema: Mapping[str, Any], root: Mapping[str, Any], at: str) -> list[str]:
    problems = []
    if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", math.inf):
        problems.append(f"{at}: {len(value)} items is outside the schema's bounds")
    prefix = schema.get("prefixItems", [])
    for index, item in enumerate(value):
        if index < len(prefix):
            problems += validate(item, prefix[index], root=root, at=f"{at}[{index}]")
        elif isinstance(schema.get("items"), Mapping):
            problems += validate(item, schema["items"], root=root, at=f"{at}[{index}]")
    return problems


def _number(value: float, schema: Mapping[str, Any], at: str) -> list[str]:
    checks: dict[str, Any] = {
        "minimum": lambda bound: value >= bound,
        "maximum": lambda bound: value <= bound,
        "exclusiveMinimum": lambda bound: value > bound,
        "exclusiveMaximum": lambda bound: value < bound,
    }
    broken = [name for name, fits in checks.items() if name in schema and not fits(schema[name])]
    return [f"{at}: {value!r} breaks {name} {schema[name]!r}" for name in broken]


def _resolve(root: Mapping[str, Any], ref: str) -> Mapping[str, Any] | None:
    if not ref.startswith("#"):
        return None
    node: Any = root
    for part in ref.lstrip("#").strip("/").split("/") if ref != "#" else []:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, Mapping) else None
