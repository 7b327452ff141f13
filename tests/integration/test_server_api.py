"""The HTTP API of a real server (-dp 2, 2 API servers) through the official openai SDK and httpx."""
from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from bastion.engine.llm import LLM
from bastion.sampling_params import SamplingParams

MODEL = "demo"
PROMPTS = ["The function returns", "A list is", "import os\n", "The class object"]
QUESTIONS = ["What is a list?", "How do I open a file?"]


@pytest.fixture(scope="module")
def offline(demo_model):
    return LLM(demo_model, dtype="float32")


@pytest.fixture(scope="module")
def server(shared_server):
    return shared_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def greedy(max_tokens: int) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=max_tokens)


def test_sync_completions_equal_offline_outputs(client, offline):
    expected = offline.generate(PROMPTS, greedy(24))
    for prompt, want in zip(PROMPTS, expected):
        got = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
        assert got.choices[0].text == want.outputs[0].text
        assert got.choices[0].finish_reason == want.outputs[0].finish_reason
        assert got.usage.prompt_tokens == len(want.prompt_token_ids)
        assert got.usage.completion_tokens == len(want.outputs[0].token_ids)
        streamed = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0,
                                             stream=True, stream_options={"include_usage": True})
        chunks = list(streamed)
        assert "".join(c.choices[0].text for c in chunks if c.choices) == want.outputs[0].text
        assert chunks[-1].usage.completion_tokens == len(want.outputs[0].token_ids)


def test_sync_chat_equals_offline_chat(client, offline):
    for question in QUESTIONS:
        messages = [{"role": "user", "content": question}]
        want = offline.chat(messages, greedy(20))[0]
        got = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
        assert got.choices[0].message.content == want.outputs[0].text
        assert got.choices[0].message.role == "assistant"
        assert got.usage.prompt_tokens == len(want.prompt_token_ids)
        assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens
        stream = client.chat.completions.create(model=MODEL, messages=messages, max_completion_tokens=20,
                                                temperature=0, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == want.outputs[0].text


def test_async_client_concurrent_requests_equal_offline(server, offline):
    expected = offline.generate(PROMPTS, greedy(16))

    async def run() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as ac:
            async def one(prompt: str, stream: bool) -> str:
                if not stream:
                    r = await ac.completions.create(model=MODEL, prompt=prompt, max_tokens=16, temperature=0)
                    return r.choices[0].text
                s = await ac.completions.create(model=MODEL, prompt=prompt, max_tokens=16,
                                                temperature=0, stream=True)
                return "".join([c.choices[0].text async for c in s if c.choices])
            return await asyncio.gather(*[one(p, i % 2 == 0) for i, p in enumerate(PROMPTS * 2)])
    got = asyncio.run(run())
    assert got == [e.outputs[0].text for e in expected] * 2


def test_64_concurrent_streams_complete_with_usage_on_both_ranks(server):
    before = [server.metric("bastion_rank_requests_total", rank=str(r)) for r in (0, 1)]

    async def run() -> list[tuple[int, int]]:
        async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as ac:
            async def one(i: int) -> tuple[int, int]:
                s = await ac.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"Question {i}: what is a dict?"}],
                    max_tokens=12, temperature=0.7, seed=i, stream=True,
                    stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
                usage, pieces = None, 0
                async for chunk in s:
                    pieces += sum(1 for c in chunk.choices if c.delta.content)
                    usage = chunk.usage or usage
                return usage.completion_tokens, pieces
            return await asyncio.wait_for(asyncio.gather(*[one(i) for i in range(64)]), 300)
    results = asyncio.run(run())
    assert all(tokens == 12 and pieces >= 1 for tokens, pieces in results)
    after = [server.metric("bastion_rank_requests_total", rank=str(r)) for r in (0, 1)]
    assert sum(after) - sum(before) == 64
    assert all(a > b for a, b in zip(after, before)), "both ranks must serve work"


def test_n_stop_strings_and_logprobs(client, offline):
    base = offline.generate("The function returns", greedy(24))[0].outputs[0].text
    stop = base[5:9]
    r = client.completions.create(model=MODEL, prompt="The function returns", max_tokens=24,
                                  temperature=0, stop=[stop])
    assert r.choices[0].text == base[:base.index(stop)] and r.choices[0].finish_reason == "stop"
    r = client.completions.create(model=MODEL, prompt="The function returns", max_tokens=6,
                                  temperature=1.0, seed=7, n=3, logprobs=2)
    assert sorted(c.index for c in r.choices) == [0, 1, 2] and r.usage.completion_tokens == 18
    for choice in r.choices:
        assert len(choice.logprobs.tokens) == 6 and len(choice.logprobs.top_logprobs[0]) == 2
        assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                          max_tokens=4, temperature=0, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert len(content) == 4 and all(len(c.top_logprobs) == 3 for c in content)
    assert "".join(c.token for c in content) == chat.choices[0].message.content


def test_models_tokenize_detokenize_health_version(server, client):
    assert [m.id for m in client.models.list().data] == [MODEL, "bastion-demo"]
    ids = httpx.post(f"{server.url}/tokenize", json={"prompt": "The function returns"}).json()
    assert ids["count"] == len(ids["tokens"]) and ids["max_model_len"] == 2048
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": ids["tokens"]}).json()["prompt"]
    assert text.endswith("The function returns")
    health = httpx.get(f"{server.url}/health")
    assert health.status_code == 200
    assert health.json()["ranks"] == [{"rank": 0, "state": "ready", "restarts": 0},
                                      {"rank": 1, "state": "ready", "restarts": 0}]
    assert httpx.get(f"{server.url}/version").json()["version"]
    r = client.completions.create(model="bastion-demo", prompt="A", max_tokens=2)
    assert r.model == MODEL


def test_sglang_generate(server, offline):
    want = offline.generate("The function returns", greedy(10))[0].outputs[0]
    r = httpx.post(f"{server.url}/generate", json={"text": "The function returns", "max_tokens": 10,
                                                    "sampling_params": {"temperature": 0}}).json()
    assert r["text"] == want.text and r["output_ids"] == want.token_ids
    assert r["meta_info"]["finish_reason"] == {"type": "length", "length": 10}
    ids = httpx.post(f"{server.url}/tokenize", json={"prompt": "The function returns"}).json()["tokens"]
    events = []
    with httpx.stream("POST", f"{server.url}/generate", json={
            "input_ids": ids, "stream": True,
            "sampling_params": {"max_new_tokens": 10, "temperature": 0}}) as s:
        for line in s.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["text"] == want.text


def test_client_disconnect_aborts_and_frees_blocks(server):
    generated = server.metric("bastion_generation_tokens_total")
    with httpx.stream("POST", f"{server.url}/v1/completions", timeout=60, json={
            "model": MODEL, "prompt": "The function returns", "max_tokens": 2000, "stream": True,
            "ignore_eos": True}) as s:
        lines = s.iter_lines()
        for _ in range(3):
            next(line for line in lines if line.startswith("data: "))
    running = server.wait_for_metric("bastion_num_requests_running", lambda v: v == 0)
    usage = server.wait_for_metric("bastion_kv_cache_usage_ratio", lambda v: v == 0)
    assert running == 0 and usage == 0
    after = server.wait_for_metric("bastion_generation_tokens_total", lambda v: v > generated)
    assert 3 <= after - generated < 2000, "the request was aborted, not run to the end"


def test_readme_curl_one_liners_work_as_written(shared_server):
    from pathlib import Path
    import shlex
    import subprocess

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("curl http://127.0.0.1:8000/")]
    assert len(commands) >= 4
    host = shared_server.url.split("//", 1)[1]
    for command in commands:
        argv = shlex.split(command.replace("127.0.0.1:8000", host))  # the test server's own port
        out = subprocess.run([*argv, "-sS", "--fail-with-body"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, (command, out.stdout, out.stderr)
        body = json.loads(out.stdout)
        assert "error" not in body and (body.get("choices") or body.get("text") or body.get("status") == "ok"
                                        or body.get("type") == "message" and body["content"])  # Anthropic's


def test_a_non_streaming_client_that_disconnects_is_aborted_too(server):
    import socket
    from urllib.parse import urlsplit

    generated = server.metric("bastion_generation_tokens_total")
    parts = urlsplit(server.url)
    body = json.dumps({"model": MODEL, "prompt": "The function returns", "max_tokens": 2000,
                       "ignore_eos": True}).encode()
    with socket.create_connection((parts.hostname, parts.port), timeout=30) as raw:
        raw.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        assert server.wait_for_metric("bastion_num_requests_running", lambda v: v >= 1) >= 1
    running = server.wait_for_metric("bastion_num_requests_running", lambda v: v == 0)
    usage = server.wait_for_metric("bastion_kv_cache_usage_ratio", lambda v: v == 0)
    assert running == 0 and usage == 0
    after = server.wait_for_metric("bastion_generation_tokens_total", lambda v: v > generated)
    assert 1 <= after - generated < 2000, "the request was aborted, not run to the end"
