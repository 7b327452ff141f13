"""guidellm's request bodies, byte for byte as its openai_http backend builds them
(guidellm/backends/openai/request_handlers.py: `format`), sent with httpx to a real server:
usage on every chunk (vLLM's continuous_usage_stats), and ignore_eos / max_completion_tokens /
max_tokens honoured to the token. Fields that do not change the answer are accepted and ignored."""
from __future__ import annotations

import json

import httpx
import openai
import pytest

MODEL = "demo"
QUESTION = "How do I open a file?"  # the demo model's greedy answer ends (EOS) after 12 tokens
STREAM_OPTIONS = {"include_usage": True, "continuous_usage_stats": True}


def guidellm_chat(text: str, output_tokens: int, stream: bool = True) -> dict:
    """`ChatCompletionsRequestHandler.format` for a synthetic-text request."""
    body: dict = {"model": MODEL}
    if stream:
        body.update(stream=True, stream_options=dict(STREAM_OPTIONS))
    body.update(max_completion_tokens=output_tokens, stop=None, ignore_eos=True)
    body["messages"] = [{"role": "user", "content": [{"type": "text", "text": text}]}]
    return body


def guidellm_completion(text: str, output_tokens: int) -> dict:
    """`TextCompletionsRequestHandler.format` for a synthetic-text request."""
    return {"model": MODEL, "stream": True, "stream_options": dict(STREAM_OPTIONS),
            "max_tokens": output_tokens, "stop": None, "ignore_eos": True, "prompt": text}


def stream(url: str, path: str, body: dict) -> list[dict]:
    """The SSE chunks of one streamed request (an error event fails the test)."""
    chunks = []
    with httpx.stream("POST", url + path, json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return chunks
            chunk = json.loads(line[len("data: "):])
            assert "error" not in chunk, chunk
            chunks.append(chunk)
    raise AssertionError("the stream ended without [DONE]")


def check_usage_on_every_chunk(chunks: list[dict], prompt_tokens: int, output_tokens: int) -> None:
    done = 0
    for chunk in chunks:
        usage = chunk["usage"]
        assert usage["prompt_tokens"] == prompt_tokens
        assert usage["total_tokens"] == prompt_tokens + usage["completion_tokens"]
        assert usage["completion_tokens"] >= done
        done = usage["completion_tokens"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == output_tokens
    assert chunks[-2]["usage"]["completion_tokens"] == output_tokens  # the last text chunk: all of it
    assert [c["finish_reason"] for c in chunks[-2]["choices"]] == ["length"]


def test_guidellm_chat_stream_has_usage_on_every_chunk_and_exact_token_counts(shared_server):
    url = shared_server.url
    prompt_tokens = httpx.post(url + "/tokenize", json={"model": MODEL, "messages": [
        {"role": "user", "content": QUESTION}]}).json()["count"]
    for output_tokens in (48, 7):
        chunks = stream(url, "/v1/chat/completions", guidellm_chat(QUESTION, output_tokens))
        first = chunks[0]
        assert first["choices"][0]["delta"]["role"] == "assistant"
        assert first["usage"] == {"prompt_tokens": prompt_tokens, "completion_tokens": 0,
                                  "total_tokens": prompt_tokens}
        check_usage_on_every_chunk(chunks, prompt_tokens, output_tokens)


def test_guidellm_completions_stream_has_usage_on_every_chunk(shared_server):
    url = shared_server.url
    text = "A list is"
    prompt_tokens = httpx.post(url + "/tokenize", json={"model": MODEL, "prompt": text}).json()["count"]
    chunks = stream(url, "/v1/completions", guidellm_completion(text, 40))
    assert all(c["choices"] for c in chunks[:-1])
    check_usage_on_every_chunk(chunks, prompt_tokens, 40)
    assert len("".join(c["choices"][0]["text"] for c in chunks[:-1])) > 0


def test_guidellm_non_streamed_body_and_ignore_eos_decides_the_length(shared_server):
    url = shared_server.url
    r = httpx.post(url + "/v1/chat/completions", json=guidellm_chat(QUESTION, 30, stream=False), timeout=60)
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 30
    # The same body greedy, with and without ignore_eos: the model's own end is 12 tokens in.
    greedy = {**guidellm_chat(QUESTION, 30), "temperature": 0}
    honoured = stream(url, "/v1/chat/completions", greedy)
    assert honoured[-1]["usage"]["completion_tokens"] == 30
    ended = stream(url, "/v1/chat/completions", {**greedy, "ignore_eos": False})
    assert ended[-1]["usage"]["completion_tokens"] == 12
    assert [c["finish_reason"] for c in ended[-2]["choices"]] == ["stop"]


def test_include_usage_alone_keeps_openai_shape(shared_server):
    body = {**guidellm_chat(QUESTION, 5), "stream_options": {"include_usage": True}}
    chunks = stream(shared_server.url, "/v1/chat/completions", body)
    assert all(c["usage"] is None for c in chunks[:-1]) and chunks[-1]["usage"]["completion_tokens"] == 5
    body["stream_options"] = {"include_usage": False, "continuous_usage_stats": True}  # as vLLM: no usage
    chunks = stream(shared_server.url, "/v1/chat/completions", body)
    assert all("usage" not in c for c in chunks)


@pytest.mark.parametrize("stream_flag", [False, True])
def test_fields_that_do_not_change_the_answer_are_ignored(shared_server, stream_flag):
    client = openai.OpenAI(base_url=f"{shared_server.url}/v1", api_key="unused", max_retries=0)
    messages = [{"role": "user", "content": QUESTION}]

    def answer(**extra) -> str:
        if not stream_flag:
            r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20,
                                               temperature=0, **extra)
            return r.choices[0].message.content
        s = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0,
                                           stream=True, **extra)
        return "".join(c.choices[0].delta.content or "" for c in s if c.choices)
    plain = answer()
    assert plain == answer(user="u-1", metadata={"team": "a"}, store=False, service_tier="auto",
                           parallel_tool_calls=False, extra_body={
                               "prompt_cache_key": "k", "safety_identifier": "s", "priority": 0,
                               "tool_choice": "none", "modalities": ["text"]})
