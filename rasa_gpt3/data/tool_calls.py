"""Tool calling in chat fine-tune records, as OpenAI's fine-tuning data format has it.

A record may define `tools` (a list of `{"type": "function", "function": {"name", "description", "parameters"}}`,
or the older `functions`) and `parallel_tool_calls`; an assistant message may carry `tool_calls` (each
`{"id", "type": "function", "function": {"name", "arguments": "<JSON text>"}}`, content then null or absent) or
the older `function_call`; a `tool` message answers one call by its `tool_call_id`. The last assistant message may
be a tool call: that is what the model learns to make.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Optional, Set

TOOL_KEYS = ("tools", "functions", "parallel_tool_calls")


def makes_a_call(message: Dict[str, Any]) -> bool:
    """True when an assistant message calls a tool or function (then it needs no text content)."""
    return bool(message.get("tool_calls") or message.get("function_call"))


def tool_use_problems(record: Dict[str, Any]) -> List[str]:
    """What is malformed in the record's tools, tool calls and tool messages (empty when all is well)."""
    problems: List[str] = []
    tools = record.get("tools")
    if "tools" in record and not (type(tools) is list and tools and all(_is_function_tool(t) for t in tools)):
        problems.append('`tools` is not a list of {"type": "function", "function": {"name": ...}}')
    functions = record.get("functions")
    if "functions" in record and not (
        type(functions) is list and functions and all(type(f) is dict and _is_name(f.get("name")) for f in functions)
    ):
        problems.append('`functions` is not a list of {"name": ...}')
    if "parallel_tool_calls" in record and type(record["parallel_tool_calls"]) is not bool:
        problems.append("`parallel_tool_calls` is not true or false")
    call_ids: Set[str] = set()
    for message in record.get("messages") or []:
        if type(message) is not dict:
            continue
        role = message.get("role")
        if "tool_calls" in message and message["tool_calls"] is not None:
            calls = message["tool_calls"]
            if role != "assistant":
                problems.append(f"a {role} message has tool_calls (only assistant messages make calls)")
            elif not (type(calls) is list and calls and all(_is_call(call) for call in calls)):
                problems.append(
                    'tool_calls is not a list of {"id", "type": "function", '
                    '"function": {"name", "arguments": "<JSON text>"}}'
                )
            else:
                call_ids.update(call["id"] for call in calls)
        if "function_call" in message and message["function_call"] is not None:
            if role != "assistant" or not _is_function(message["function_call"]):
                problems.append('function_call is not {"name", "arguments": "<JSON text>"} in an assistant message')
        if role == "tool":
            call_id = message.get("tool_call_id")
            if type(call_id) is not str:
                problems.append("a tool message has no tool_call_id")
            elif call_id not in call_ids:
                problems.append(f"a tool message answers {call_id!r}, which no earlier assistant message called")
        elif "tool_call_id" in message:
            problems.append(f"a {role} message has a tool_call_id (only tool messages answer calls)")
    return problems


def calls_text(message: Dict[str, Any]) -> str:
    """The calls of an assistant message as one line of text, `name(arguments)` each (what the checks compare)."""
    calls = message.get("tool_calls") or []
    functions = [call.get("function") for call in calls if type(call) is dict]
    if message.get("function_call"):
        functions.append(message["function_call"])
    return " ".join(f"{f.get('name')}({f.get('arguments')})" for f in functions if type(f) is dict)


def message_text(message: Dict[str, Any]) -> str:
    """A message's text: its content (the text parts of a list of content parts), then its calls as text."""
    content = message.get("content")
    if type(content) is str:
        text = content
    elif type(content) is list:
        text = " ".join(part["text"] for part in content if type(part) is dict and type(part.get("text")) is str)
    else:
        text = ""
    calls = calls_text(message)
    return f"{text} {calls}" if text and calls else text or calls


def definitions_text(record: Dict[str, Any]) -> Optional[str]:
    """The record's tool and function definitions as compact JSON (they count towards the record's tokens)."""
    defined = {key: record[key] for key in ("tools", "functions") if key in record}
    if not defined:
        return None
    return json.dumps(defined, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def _is_name(value: Any) -> bool:
    return type(value) is str and bool(value)


def _is_function(function: Any) -> bool:
    return type(function) is dict and _is_name(function.get("name")) and type(function.get("arguments")) is str


def _is_call(call: Any) -> bool:
    return (
        type(call) is dict
        and _is_name(call.get("id"))
        and call.get("type") == "function"
        and _is_function(call.get("function"))
    )


def _is_function_tool(tool: Any) -> bool:
    return (
        type(tool) is dict
        and tool.get("type") == "function"
        and type(tool.get("function")) is dict
        and _is_name(tool["function"].get("name"))
    )
