"""Bad input against a real server: the right status, an OpenAI error body, and it keeps serving."""
from __future__ import annotations

import httpx
import pytest

MODEL = "demo"
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
MSG = [{"role": "user", "content": "hi"}]

CASES = [
    # (name, method, path, json body or raw bytes, status, text the message must contain, param)
    ("max_tokens wrong type", COMPLETIONS, {"model": MODEL, "prompt": "a", "max_tokens": "ten"}, 400, "max_tokens", "max_tokens"),
    ("temperature wrong type", CHAT, {"model": MODEL, "messages": MSG, "temperature": "hot"}, 400, "temperature", "temperature"),
    ("messages not a list", CHAT, {"model": MODEL, "messages": "hi"}, 400, "messages", "messages"),
    ("negative max_tokens", COMPLETIONS, {"model": MODEL, "prompt": "a", "max_tokens": -5}, 400, "greater than or equal to 0", "max_tokens"),
    ("empty messages", CHAT, {"model": MODEL, "messages": []}, 400, "messages", "messages"),
    ("missing model", CHAT, {"messages": MSG}, 400, "missing required field 'model'", "model"),
    ("unknown role", CHAT, {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}, 400, "messages.0.role", "messages.0.role"),
    ("unknown stream option", CHAT, {"model": MODEL, "messages": MSG, "stream": True, "stream_options": {"include_usage": True, "bogus": 1}}, 400, "stream_options.bogus", "stream_options.bogus"),
    ("stream_options without stream", CHAT, {"model": MODEL, "messages": MSG, "stream_options": {"include_usage": True}}, 400, "stream", "stream_options"),
    ("tools unsupported on completions", COMPLETIONS, {"model": MODEL, "prompt": "a", "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "'tools' is not supported", "tools"),
    ("n zero", COMPLETIONS, {"model": MODEL, "prompt": "a", "n": 0}, 400, "n", "n"),
    ("top_p zero", COMPLETIONS, {"model": MODEL, "prompt": "a", "top_p": 0}, 400, "top_p", "top_p"),
    ("top_k zero", COMPLETIONS, {"model": MODEL, "prompt": "a", "top_k": 0}, 400, "top_k", "top_k"),
    ("empty stop string", COMPLETIONS, {"model": MODEL, "prompt": "a", "stop": [""]}, 400, "stop", "stop"),
    ("prompt over the context", COMPLETIONS, {"model": MODEL, "prompt": [7] * 3000}, 400, "maximum context length is 2048 tokens, but the prompt has 3000 tokens", "prompt"),
    ("prompt plus max_tokens over the context", COMPLETIONS, {"model": MODEL, "prompt": [7] * 2000, "max_tokens": 100}, 400, "you requested 2100 tokens (2000 in the prompt, 100 for the completion)", "max_tokens"),
    ("token id outside the vocabulary", COMPLETIONS, {"model": MODEL, "prompt": [1, 999999]}, 400, "token id 999999", "prompt"),
    ("too many batched prompts", COMPLETIONS, {"model": MODEL, "prompt": ["a"] * 129}, 400, "129 prompts in one request: this server takes at most 128 (--max-batched-prompts)", "prompt"),
    ("a batched prompt over the context", COMPLETIONS, {"model": MODEL, "prompt": [[7], [7] * 3000]}, 400, "prompt 1 of the batch: This model's maximum context length is 2048", "prompt"),
    ("beam search unsupported", COMPLETIONS, {"model": MODEL, "prompt": "a", "use_beam_search": True}, 400, "'use_beam_search' is not supported", "use_beam_search"),
    ("tool_choice required without tools", CHAT, {"model": MODEL, "messages": MSG, "tool_choice": "required"}, 400, "'tools' gives none", "tool_choice"),
    ("unknown model", COMPLETIONS, {"model": "gpt-9", "prompt": "a"}, 404, "The model 'gpt-9' does not exist", "model"),
    ("malformed JSON", COMPLETIONS, b'{"model": "demo", "prompt": ', 400, "not valid JSON", None),
    ("generate with text and input_ids", "/generate", {"text": "a", "input_ids": [1]}, 400, "exactly one of", "text"),
    ("generate unknown sampling key", "/generate", {"text": "a", "sampling_params": {"max_new_token": 3}}, 400, "sampling_params.max_new_token", "sampling_params.max_new_token"),
    ("tokenize unknown model", "/tokenize", {"model": "nope", "prompt": "a"}, 404, "does not exist", "model"),
]


@pytest.mark.parametrize("name,path,body,status,text,param", CASES, ids=[c[0] for c in CASES])
def test_bad_input_gets_an_openai_error(shared_server, name, path, body, status, text, param):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(shared_server.url + path, timeout=30, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert text in error["message"] and error["param"] == param
    assert error["type"] and "Traceback" not in r.text


def test_huge_bodies_get_413_with_or_without_a_length(shared_server):
    big = b'{"model": "demo", "prompt": "' + b"a" * (5 * 2**20) + b'"}'
    r = httpx.post(shared_server.url + COMPLETIONS, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "--max-request-body-bytes" in r.json()["error"]["message"]

    def chunks():
        for i in range(0, len(big), 2**16):
            yield big[i:i + 2**16]
    r = httpx.post(shared_server.url + COMPLETIONS, content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"


def test_unknown_routes_and_methods_get_error_bodies(shared_server):
    r = httpx.get(shared_server.url + "/v1/nothing")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(shared_server.url + COMPLETIONS)
    assert r.status_code == 405 and "error" in r.json()


def test_the_server_keeps_serving_after_bad_input(shared_server):
    r = httpx.post(shared_server.url + COMPLETIONS, json={"model": MODEL, "prompt": "The", "max_tokens": 3})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    assert shared_server.metric("bastion_http_requests_total", route=COMPLETIONS, status="400") >= 10
