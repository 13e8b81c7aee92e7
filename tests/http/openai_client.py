"""Structured output and tool calling through the official OpenAI Python client.

Run by `tests/http/python.rs` against a server on SmolLM2 whose chat template declares tools
in the Hermes format: python3 openai_client.py BASE_URL TOKEN. Exits non-zero on the first
failed check, with what was received.
"""

import json
import sys

import jsonschema
import openai

BASE, TOKEN = sys.argv[1], sys.argv[2]
client = openai.OpenAI(base_url=BASE, api_key=TOKEN)

WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 30},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "The current weather in a city",
        "parameters": WEATHER}},
    {"type": "function", "function": {
        "name": "get_time", "description": "The current time in a timezone",
        "parameters": {"type": "object", "properties": {"timezone": {"type": "string", "maxLength": 30}},
                       "required": ["timezone"], "additionalProperties": False}}},
]
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant with tools."},
    {"role": "user", "content": "What is the weather like in Paris today?"},
]


def check(condition, what):
    if not condition:
        sys.exit(f"FAILED: {what}")


# A JSON schema holds for sampled answers; the validator is the `jsonschema` package.
ORDER = {
    "type": "object",
    "properties": {
        "customer": {"type": "object",
                     "properties": {"name": {"type": "string", "maxLength": 24},
                                    "tier": {"enum": ["free", "pro"]}},
                     "required": ["name", "tier"], "additionalProperties": False},
        "items": {"type": "array", "minItems": 1, "maxItems": 3,
                  "items": {"type": "object",
                            "properties": {"sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"},
                                           "quantity": {"type": "integer", "minimum": 1, "maximum": 9}},
                            "required": ["sku", "quantity"], "additionalProperties": False}},
    },
    "required": ["customer", "items"],
    "additionalProperties": False,
}
for seed in range(10):
    answer = client.chat.completions.create(
        model="", messages=[{"role": "user", "content": "Write an order as JSON."}],
        temperature=1.0, seed=seed, max_tokens=200,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "order", "schema": ORDER, "strict": True}})
    text = answer.choices[0].message.content
    jsonschema.validate(json.loads(text), ORDER)

# A weather round trip: the call, whole and streamed, then the answer after the tool's result.
answer = client.chat.completions.create(
    model="", messages=QUESTION, tools=TOOLS, tool_choice="required",
    parallel_tool_calls=False, temperature=0, max_tokens=96)
choice = answer.choices[0]
check(choice.finish_reason == "tool_calls", f"finish_reason tool_calls: {choice}")
calls = choice.message.tool_calls
check(calls and len(calls) == 1 and calls[0].type == "function", f"one call: {choice}")
call = calls[0]
check(call.function.name == "get_weather", f"get_weather: {call}")
arguments = json.loads(call.function.arguments)
jsonschema.validate(arguments, WEATHER)

stream = client.chat.completions.create(
    model="", messages=QUESTION, tools=TOOLS, tool_choice="required",
    parallel_tool_calls=False, temperature=0, max_tokens=96, stream=True)
pieces, finish = {}, None
for chunk in stream:
    for c in chunk.choices:
        for piece in c.delta.tool_calls or []:
            entry = pieces.setdefault(piece.index, {"id": None, "name": "", "arguments": ""})
            if piece.id:
                check(entry["id"] is None, "the id comes once")
                entry["id"] = piece.id
            if piece.function and piece.function.name:
                entry["name"] += piece.function.name
            if piece.function and piece.function.arguments:
                entry["arguments"] += piece.function.arguments
        finish = c.finish_reason or finish
check(finish == "tool_calls", f"streamed finish_reason: {finish}")
check(list(pieces) == [0], f"one streamed call: {pieces}")
check(pieces[0]["name"] == "get_weather", f"streamed name: {pieces}")
check(json.loads(pieces[0]["arguments"]) == arguments, f"streamed arguments: {pieces}")

followed = QUESTION + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function",
         "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
    {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 22, "sky": "sunny"})},
]
final = client.chat.completions.create(
    model="", messages=followed, tools=TOOLS, tool_choice="none", temperature=0, max_tokens=48)
check(final.choices[0].finish_reason in ("stop", "length"), f"a text answer: {final}")
check(not final.choices[0].message.tool_calls, f"no call after none: {final}")
check(final.choices[0].message.content, f"some text: {final}")
check(final.usage.prompt_tokens > answer.usage.prompt_tokens, "the call and result reach the prompt")

# A named function is the one called.
named = client.chat.completions.create(
    model="", messages=QUESTION, tools=TOOLS, temperature=1.0, max_tokens=96,
    tool_choice={"type": "function", "function": {"name": "get_time"}})
calls = named.choices[0].message.tool_calls
check(calls and [c.function.name for c in calls] == ["get_time"], f"get_time: {named}")

# A schema the grammar engine cannot enforce is a 400 naming the field.
try:
    client.chat.completions.create(
        model="", messages=QUESTION, max_tokens=8,
        response_format={"type": "json_schema", "json_schema": {
            "name": "bad", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}}})
    check(False, "a bad schema is refused")
except openai.BadRequestError as e:
    check(e.body.get("param") == "response_format.json_schema.schema", f"the param: {e.body}")

print("ok")
