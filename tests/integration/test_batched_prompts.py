"""Batched prompts on /v1/completions through the openai SDK against real servers: a list of
strings or of token-id lists, with n; choices prompt-major; usage summed; streamed or not; the
same greedy text as each prompt sent alone; and a batch admitted as one request, whole or not
at all."""
from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.support.server_process import ServerProcess

MODEL = "demo"
PROMPTS = ["The function returns", "A list is", "import os\n"]


@pytest.fixture(scope="module")
def client(shared_server):
    return openai.OpenAI(base_url=f"{shared_server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def alone(client):
    """Each prompt sent on its own, greedy: its text and usage."""
    out = []
    for prompt in PROMPTS:
        r = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
        out.append((r.choices[0].text, r.usage.prompt_tokens, r.usage.completion_tokens))
    return out


@pytest.mark.parametrize("n", [1, 2])
def test_a_batch_equals_its_prompts_sent_alone(client, alone, n):
    r = client.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=12, temperature=0, n=n)
    assert [c.index for c in r.choices] == list(range(len(PROMPTS) * n))
    for choice in r.choices:  # prompt-major: prompt p's j-th choice is p * n + j
        assert choice.text == alone[choice.index // n][0]
    assert r.usage.prompt_tokens == sum(a[1] for a in alone)
    assert r.usage.completion_tokens == n * sum(a[2] for a in alone)
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_a_streamed_batch_interleaves_its_choices_and_sums_usage(client, alone):
    s = client.completions.create(model=MODEL, prompt=PROMPTS, max_tokens=12, temperature=0, n=2,
                                  stream=True, stream_options={"include_usage": True},
                                  extra_body={"stream_options": {"include_usage": True,
                                                                 "continuous_usage_stats": True}})
    texts: dict[int, str] = {}
    finished, chunks = [], list(s)
    for chunk in chunks[:-1]:
        assert chunk.usage.prompt_tokens == sum(a[1] for a in alone)  # usage so far on every chunk
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
            if c.finish_reason:
                finished.append(c.index)
    assert sorted(finished) == list(range(6))
    assert texts == {i: alone[i // 2][0] for i in range(6)}
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens == 2 * sum(a[2] for a in alone)
    assert chunks[-2].usage.completion_tokens == usage.completion_tokens


def test_token_id_lists_batch_like_their_text(shared_server, client, alone):
    ids = [httpx.post(f"{shared_server.url}/tokenize", json={"prompt": p}).json()["tokens"] for p in PROMPTS]
    r = client.completions.create(model=MODEL, prompt=ids, max_tokens=12, temperature=0)
    assert [c.text for c in r.choices] == [a[0] for a in alone]
    s = client.completions.create(model=MODEL, prompt=ids[:2], max_tokens=12, temperature=0, stream=True)
    texts: dict[int, str] = {}
    for chunk in s:
        for c in chunk.choices:
            texts[c.index] = texts.get(c.index, "") + c.text
    assert texts == {0: alone[0][0], 1: alone[1][0]}


def test_a_batch_is_admitted_whole_or_not_at_all():
    """One engine slot. A batch of two prompts (more sequences than slots) is admitted as one
    request and runs: admitted one by one, the second prompt would wait for the slot the first
    holds until its answer is read, which is never. With the slot taken and no queue, the
    batch is refused whole (503, nothing of it runs), streamed or not."""
    server = ServerProcess("--max-num-seqs", "1", "--max-queued-requests", "0", "--max-batched-prompts", "4",
                           "--dtype", "float32", "--enforce-eager")  # NOTE: the long request holds the slot
    url = f"{server.url}/v1/completions"
    batch = {"model": "bastion-demo", "prompt": ["a", "b"], "max_tokens": 3, "ignore_eos": True}
    try:
        r = httpx.post(url, json=batch, timeout=60)
        assert r.status_code == 200, r.text
        assert [c["index"] for c in r.json()["choices"]] == [0, 1]
        assert r.json()["usage"]["completion_tokens"] == 6
        long = {"model": "bastion-demo", "prompt": "a", "max_tokens": 1500, "ignore_eos": True, "stream": True}
        with httpx.stream("POST", url, json=long, timeout=60) as running:
            assert running.status_code == 200
            lines = running.iter_lines()  # NOTE: kept: a dropped generator closes the stream
            next(lines)  # it runs: the one slot is taken
            for stream in (False, True):
                r = httpx.post(url, json={**batch, "stream": stream}, timeout=60)
                assert r.status_code == 503 and "Retry-After" in r.headers, r.text
        for _ in range(100):  # the long request, left by its client, gives its slot back
            r = httpx.post(url, json=batch, timeout=60)
            if r.status_code != 503:
                break
            time.sleep(0.1)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 6, r.text
    finally:
        server.stop()
