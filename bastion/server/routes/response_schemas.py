"""The JSON shapes of successful (200) answers, as JSON Schema, for the OpenAPI document.

The routes build their answers as plain dicts (`openai_answers.py`, `sglang.py`, `info.py`);
these schemas describe them for clients. They name the fields a client can rely on and leave
objects open to more; the fuzz test (tests/integration/test_openapi.py) checks every answer
it gets against them, so a change of shape that breaks a client fails there.
"""
from __future__ import annotations

_INT, _STR, _NUM = {"type": "integer"}, {"type": "string"}, {"type": "number"}
_FINISH = {"type": ["string", "null"], "enum": ["stop", "length", "abort", "tool_calls", None]}
_OBJECT = {"type": "object"}


def _obj(required: dict, **optional: dict) -> dict:
    return {"type": "object", "required": list(required), "properties": {**required, **optional}}


USAGE = _obj({"prompt_tokens": _INT, "completion_tokens": _INT, "total_tokens": _INT},
             prompt_tokens_details=_obj({"cached_tokens": _INT}))
_CHAT_LOGPROBS = {"anyOf": [{"type": "null"}, _obj({"content": {"type": "array", "items": _OBJECT}})]}
_COMPLETION_LOGPROBS = {"anyOf": [{"type": "null"}, _obj({
    "tokens": {"type": "array", "items": _STR},
    # NOTE: null for an echoed prompt's first token (server/scoring/echo.py)
    "token_logprobs": {"type": "array", "items": {"type": ["number", "null"]}},
    "top_logprobs": {"type": "array", "items": {"type": ["object", "null"]}},
    "text_offset": {"type": "array", "items": _INT}})]}


def _envelope(kind: str, choice: dict) -> dict:
    return _obj({"id": _STR, "object": {"const": kind}, "created": _INT, "model": _STR,
                 "choices": {"type": "array", "items": choice}, "usage": USAGE})


_TOOL_CALL = _obj({"id": _STR, "type": {"const": "function"},
                   "function": _obj({"name": _STR, "arguments": _STR})})
CHAT_COMPLETION = _envelope("chat.completion", _obj({
    "index": _INT, "finish_reason": _FINISH, "logprobs": _CHAT_LOGPROBS,
    "message": _obj({"role": {"const": "assistant"}, "content": {"type": ["string", "null"]}},
                    tool_calls={"type": "array", "items": _TOOL_CALL},
                    # with a reasoning parser: the thinking, under SGLang's and vLLM's names
                    reasoning_content={"type": ["string", "null"]}, reasoning={"type": ["string", "null"]})}))
COMPLETION = _envelope("text_completion", _obj({
    "index": _INT, "text": _STR, "finish_reason": _FINISH, "logprobs": _COMPLETION_LOGPROBS}))
_GENERATED = _obj({"index": _INT, "text": _STR, "output_ids": {"type": "array", "items": _INT},
                   "meta_info": _obj({"id": _STR, "prompt_tokens": _INT, "completion_tokens": _INT,
                                      "finish_reason": {"anyOf": [{"type": "null"}, _OBJECT]}})})
GENERATE = {"anyOf": [_GENERATED, {"type": "array", "items": _GENERATED}]}
MODELS = _obj({"object": {"const": "list"}, "data": {"type": "array", "items": _obj({
    "id": _STR, "object": {"const": "model"}, "created": _INT, "owned_by": _STR,
    "max_model_len": _INT})}})
TOKENIZE = _obj({"count": _INT, "max_model_len": _INT, "tokens": {"type": "array", "items": _INT}})
DETOKENIZE = _obj({"prompt": _STR})
HEALTH = _obj({"status": {"enum": ["ok", "unavailable"]},
               "ranks": {"type": "array", "items": _obj({"rank": _INT, "state": _STR, "restarts": _INT})}})
VERSION = _obj({"version": _STR})
_BLOCK = {"anyOf": [_obj({"type": {"const": "text"}, "text": _STR}),
                    _obj({"type": {"const": "tool_use"}, "id": _STR, "name": _STR, "input": _OBJECT}),
                    _obj({"type": {"const": "thinking"}, "thinking": _STR})]}
ANTHROPIC_MESSAGE = _obj({
    "id": _STR, "type": {"const": "message"}, "role": {"const": "assistant"}, "model": _STR,
    "content": {"type": "array", "items": _BLOCK},
    "stop_reason": {"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use"]},
    "stop_sequence": {"type": ["string", "null"]},
    "usage": _obj({"input_tokens": _INT, "output_tokens": _INT})})
ANTHROPIC_TOKEN_COUNT = _obj({"input_tokens": _INT})
_RESPONSE_ITEM = {"anyOf": [
    _obj({"type": {"const": "message"}, "id": _STR, "role": {"const": "assistant"}, "status": _STR,
          "content": {"type": "array", "items": _obj({"type": {"const": "output_text"}, "text": _STR,
                                                      "annotations": {"type": "array"}})}}),
    _obj({"type": {"const": "function_call"}, "id": _STR, "call_id": _STR, "name": _STR,
          "arguments": _STR, "status": _STR}),
    _obj({"type": _STR})]}  # NOTE: more item types (reasoning) may come
RESPONSE = _obj({"id": _STR, "object": {"const": "response"}, "created_at": _INT, "model": _STR,
                 "status": {"enum": ["completed", "incomplete", "failed", "in_progress"]},
                 "output": {"type": "array", "items": _RESPONSE_ITEM},
                 "usage": {"anyOf": [{"type": "null"}, _obj({
                     "input_tokens": _INT, "output_tokens": _INT, "total_tokens": _INT,
                     "input_tokens_details": _obj({"cached_tokens": _INT}),
                     "output_tokens_details": _obj({"reasoning_tokens": _INT})})]}})
RESPONSE_DELETED = _obj({"id": _STR, "object": {"const": "response"}, "deleted": {"const": True}})

# (path, method) -> {status: the schema of that JSON answer}; other statuses are errors.
BY_ROUTE = {
    ("/v1/chat/completions", "post"): {"200": CHAT_COMPLETION},
    ("/v1/completions", "post"): {"200": COMPLETION},
    ("/v1/messages", "post"): {"200": ANTHROPIC_MESSAGE},
    ("/v1/messages/count_tokens", "post"): {"200": ANTHROPIC_TOKEN_COUNT},
    ("/v1/responses", "post"): {"200": RESPONSE},
    ("/v1/responses/{response_id}", "get"): {"200": RESPONSE},
    ("/v1/responses/{response_id}", "delete"): {"200": RESPONSE_DELETED},
    ("/generate", "post"): {"200": GENERATE},
    ("/v1/models", "get"): {"200": MODELS},
    ("/tokenize", "post"): {"200": TOKENIZE},
    ("/detokenize", "post"): {"200": DETOKENIZE},
    ("/health", "get"): {"200": HEALTH, "503": HEALTH},  # a rank down is not an error object
    ("/version", "get"): {"200": VERSION},
    ("/openapi.json", "get"): {"200": _obj({"openapi": _STR, "paths": _OBJECT})},
}
