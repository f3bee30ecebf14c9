"""Tools a chat model may call: :class:`Tool`, and tools made from plain Python functions.

A tool is a name, a description and a JSON schema of its parameters, sent to
llama-server in OpenAI's shape. :func:`as_tools` accepts :class:`Tool`
values, OpenAI-shaped dicts and plain callables; a callable's schema comes
from its signature, type hints and docstring (the first paragraph is the
description; ``name: text`` lines under ``Args:`` describe parameters).
Everything is checked before any request: a schema that is not a JSON-schema
object, a duplicate name, or a callable whose parameters cannot be described
is a ValueError (or TypeError) naming the tool.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import re
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Tool", "ToolChoice", "as_tools", "tool_choice_body"]

ToolChoice = str  # "auto" | "none" | "required" | a tool's name

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CHOICES = ("auto", "none", "required")


@dataclass(frozen=True, slots=True)
class Tool:
    """A function tool: ``name``, ``description`` and ``parameters`` (a JSON schema object).

    ``function``, when set, is the Python callable that runs it
    (:meth:`~rocm_infer.TextModel.run_tools` calls it); it plays no part in
    what is sent to the model.
    """

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}}, hash=False)
    function: Callable[..., Any] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"tool name {self.name!r} must be 1-64 letters, digits, '_' or '-'")
        if not isinstance(self.description, str):
            raise TypeError(f"tool {self.name!r}: description must be str, not {type(self.description).__name__}")
        if not isinstance(self.parameters, Mapping) or self.parameters.get("type") != "object":
            raise ValueError(
                f"tool {self.name!r}: parameters must be a JSON schema object ({{'type': 'object', ...}}), "
                f"got {self.parameters!r}"
            )
        properties = self.parameters.get("properties", {})
        if not isinstance(properties, Mapping):
            raise ValueError(f"tool {self.name!r}: parameters.properties must be an object, got {properties!r}")
        required = self.parameters.get("required", [])
        if not isinstance(required, list | tuple) or not all(isinstance(r, str) for r in required):
            raise ValueError(f"tool {self.name!r}: parameters.required must be a list of names, got {required!r}")
        if self.function is not None and not callable(self.function):
            raise TypeError(f"tool {self.name!r}: function must be callable")

    def to_openai(self) -> dict[str, Any]:
        """This tool in OpenAI's shape (``{"type": "function", "function": {...}}``)."""
        function: dict[str, Any] = {"name": self.name, "parameters": dict(self.parameters)}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}

    @classmethod
    def from_function(cls, function: Callable[..., Any], *, name: str | None = None) -> Tool:
        """A Tool describing ``function`` (see the module docs); TypeError if it cannot be described."""
        if not callable(function):
            raise TypeError(f"a tool must be a Tool, a mapping or a callable, not {type(function).__name__}")
        tool_name = name or getattr(function, "__name__", None)
        if not tool_name or tool_name == "<lambda>":
            raise ValueError("a tool made from a lambda (or a callable without __name__) needs name=...")
        description, documented = _parse_docstring(inspect.getdoc(function) or "")
        try:
            signature = inspect.signature(function)
            hints = typing.get_type_hints(function)
        except (TypeError, ValueError, NameError) as exc:
            raise TypeError(f"tool {tool_name!r}: cannot read its signature: {exc}") from exc
        properties: dict[str, Any] = {}
        required: list[str] = []
        for parameter in signature.parameters.values():
            if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                raise TypeError(f"tool {tool_name!r}: *args and **kwargs cannot be described to a model")
            if parameter.kind is parameter.POSITIONAL_ONLY:
                raise TypeError(f"tool {tool_name!r}: positional-only parameter {parameter.name!r} cannot be named")
            hint = hints.get(parameter.name, Any)
            schema = _schema_of(hint, f"tool {tool_name!r}, parameter {parameter.name!r}")
            if parameter.name in documented:
                schema = {**schema, "description": documented[parameter.name]}
            properties[parameter.name] = schema
            if parameter.default is parameter.empty:
                required.append(parameter.name)
        parameters: dict[str, Any] = {"type": "object", "properties": properties}
        if required:
            parameters["required"] = required
        return cls(tool_name, description, parameters, function)

    @classmethod
    def coerce(cls, value: Tool | Mapping[str, Any] | Callable[..., Any]) -> Tool:
        """Accept a Tool, an OpenAI-shaped tool dict (or its ``function`` part), or a callable."""
        if isinstance(value, Tool):
            return value
        if isinstance(value, Mapping):
            spec = value.get("function", value) if value.get("type", "function") == "function" else None
            if not isinstance(spec, Mapping) or "name" not in spec:
                raise ValueError(
                    f"a tool mapping must be {{'type': 'function', 'function': {{'name': ...}}}}: {value!r}"
                )
            parameters = spec.get("parameters", {"type": "object", "properties": {}})
            return cls(spec["name"], spec.get("description", "") or "", parameters)
        return cls.from_function(value)


def as_tools(tools: Iterable[Tool | Mapping[str, Any] | Callable[..., Any]] | None) -> tuple[Tool, ...]:
    """Every tool of ``tools`` as a :class:`Tool`; ValueError for a duplicate name."""
    if tools is None:
        return ()
    if isinstance(tools, Mapping | str) or callable(tools) and not isinstance(tools, Iterable):
        raise TypeError("tools must be a list of tools, not a single tool")
    result = tuple(Tool.coerce(t) for t in tools)
    seen: set[str] = set()
    for tool in result:
        if tool.name in seen:
            raise ValueError(f"two tools are named {tool.name!r}: tool names must be unique")
        seen.add(tool.name)
    return result


def tool_choice_body(tool_choice: ToolChoice | None, tools: tuple[Tool, ...]) -> tuple[tuple[Tool, ...], str | None]:
    """The tools to send and the ``tool_choice`` field for ``tool_choice``.

    A tool's name means "call this one": llama-server takes no named choice, so
    only that tool is sent, with ``"required"``. ValueError for a choice that
    names no tool, or a choice without tools.
    """
    if tool_choice is None:
        return tools, None
    if not isinstance(tool_choice, str):
        raise TypeError(f"tool_choice must be 'auto', 'none', 'required' or a tool's name, not {tool_choice!r}")
    if not tools:
        raise ValueError(f"tool_choice={tool_choice!r} was given without tools")
    if tool_choice in _CHOICES:
        return tools, tool_choice
    for tool in tools:
        if tool.name == tool_choice:
            return (tool,), "required"
    raise ValueError(f"tool_choice {tool_choice!r} names no tool; the tools are {[t.name for t in tools]}")


# -- schemas from type hints -------------------------------------------------------------------------

_SCALARS: dict[type, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
}


def _schema_of(hint: Any, where: str) -> dict[str, Any]:
    """The JSON schema for a type hint: scalars, lists, dicts, Literal, Enum, Optional/unions, dataclasses."""
    if hint is Any or hint is inspect.Parameter.empty:
        return {}
    if hint in _SCALARS:
        return dict(_SCALARS[hint])
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [_schema_of(a, where) for a in args]
        return {"anyOf": options}
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set, frozenset):
        schema: dict[str, Any] = {"type": "array"}
        if args and not (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
            if origin is tuple:
                schema["prefixItems"] = [_schema_of(a, where) for a in args]
            else:
                schema["items"] = _schema_of(args[0], where)
        elif args:
            schema["items"] = _schema_of(args[0], where)
        return schema
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = _schema_of(args[1], where)
        return schema
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return {"enum": [member.value for member in hint]}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        nested = typing.get_type_hints(hint)
        props = {f.name: _schema_of(nested.get(f.name, Any), where) for f in dataclasses.fields(hint)}
        needed = [
            f.name
            for f in dataclasses.fields(hint)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        return {"type": "object", "properties": props, "required": needed}
    raise TypeError(f"{where}: no JSON schema for type {hint!r} (use str, int, float, bool, list, dict, Literal ...)")


def _parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(the description, {parameter: text}) from a Google-style docstring."""
    paragraphs = doc.strip().split("\n\n")
    description = " ".join(paragraphs[0].split()) if paragraphs and paragraphs[0] else ""
    if description.lower().startswith(("args:", "arguments:", "parameters:")):
        description = ""
    params: dict[str, str] = {}
    in_args = False
    current: str | None = None
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped.lower() in ("args:", "arguments:", "parameters:"):
            in_args, current = True, None
            continue
        if in_args:
            if not stripped:
                current = None
                continue
            match = re.match(r"^(\w+)\s*(\([^)]*\))?\s*:\s*(.*)$", stripped)
            if match and line.startswith((" ", "\t")) and (current is None or len(line) - len(line.lstrip()) <= 8):
                current = match.group(1)
                params[current] = match.group(3)
            elif current is not None and line.startswith((" ", "\t")):
                params[current] = f"{params[current]} {stripped}".strip()
            elif stripped.endswith(":"):
                in_args, current = False, None
    return description, params
