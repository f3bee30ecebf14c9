"""Tools from Python functions, OpenAI dicts and Tool values; checked before any request."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal

import pytest

from rocm_infer import Tool
from rocm_infer.tools import as_tools, tool_choice_body


class Unit(enum.Enum):
    C = "celsius"
    F = "fahrenheit"


@dataclass
class Place:
    city: str
    country: str = "FR"


def get_weather(city: str, unit: Unit = Unit.C, days: int = 1) -> str:
    """Get the weather forecast for a city.

    More text that is not the description.

    Args:
        city: The city's name, in English.
        unit: Degrees in celsius or fahrenheit.
        days: How many days
            ahead to forecast.
    """
    return f"sunny in {city}"


async def book(place: Place, when: Literal["today", "tomorrow"], guests: list[str] | None = None) -> dict[str, Any]:
    """Book a table."""
    return {"ok": True}


def test_a_function_becomes_a_tool_from_its_signature_hints_and_docstring() -> None:
    tool = Tool.from_function(get_weather)
    assert tool.name == "get_weather" and tool.function is get_weather
    assert tool.description == "Get the weather forecast for a city."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "The city's name, in English."},
            "unit": {"enum": ["celsius", "fahrenheit"], "description": "Degrees in celsius or fahrenheit."},
            "days": {"type": "integer", "description": "How many days ahead to forecast."},
        },
        "required": ["city"],
    }
    assert tool.to_openai() == {
        "type": "function",
        "function": {"name": "get_weather", "description": tool.description, "parameters": tool.parameters},
    }


def test_nested_and_composite_hints_become_json_schema() -> None:
    params = Tool.from_function(book).parameters
    assert params["properties"]["place"] == {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city"],
    }
    assert params["properties"]["when"] == {"enum": ["today", "tomorrow"]}
    strings = {"type": "array", "items": {"type": "string"}}
    assert params["properties"]["guests"] == {"anyOf": [strings, {"type": "null"}]}
    assert params["required"] == ["place", "when"]


def test_openai_shaped_dicts_and_tools_are_accepted_as_they_are() -> None:
    spec = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    tools = as_tools([spec, Tool("g"), get_weather])
    assert [t.name for t in tools] == ["f", "g", "get_weather"]
    assert tools[0].to_openai() == spec
    assert tools[1].parameters == {"type": "object", "properties": {}}


@pytest.mark.parametrize(
    ("tools", "error", "match"),
    [
        ([get_weather, get_weather], ValueError, "two tools are named 'get_weather'"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], ValueError, "object"),
        ([{"type": "function", "function": {"name": "f", "parameters": []}}], ValueError, "JSON schema object"),
        ([{"type": "function", "function": {"description": "no name"}}], ValueError, "'name'"),
        ([{"type": "function", "function": {"name": "bad name!"}}], ValueError, "letters, digits"),
        ([lambda x: x], ValueError, "lambda"),
        ([42], TypeError, "callable"),
        (get_weather, TypeError, "list of tools"),
        ({"type": "function", "function": {"name": "f"}}, TypeError, "list of tools"),
    ],
)
def test_bad_tools_are_refused_with_the_tools_name(tools: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        as_tools(tools)


def test_a_function_that_cannot_be_described_is_refused() -> None:
    def takes_anything(*args: int) -> None: ...

    def takes_a_socket(sock: object) -> None: ...

    with pytest.raises(TypeError, match=r"\*args"):
        Tool.from_function(takes_anything)
    with pytest.raises(TypeError, match="no JSON schema for type"):
        Tool.from_function(takes_a_socket)


def test_tool_choice_maps_to_what_llama_server_takes() -> None:
    tools = as_tools([get_weather, book])
    assert tool_choice_body(None, tools) == (tools, None)
    assert tool_choice_body("auto", tools) == (tools, "auto")
    assert tool_choice_body("required", tools) == (tools, "required")
    # llama-server takes no named choice: only that tool is sent, and a call is required.
    assert tool_choice_body("book", tools) == ((tools[1],), "required")
    with pytest.raises(ValueError, match="names no tool"):
        tool_choice_body("get_time", tools)
    with pytest.raises(ValueError, match="without tools"):
        tool_choice_body("auto", ())
    with pytest.raises(TypeError):
        tool_choice_body({"type": "function"}, tools)  # type: ignore[arg-type]
