"""logit_bias on a real server (the demo model) through the openai SDK and SGLang's /generate:
-100 bans the greedy token, +100 forces a token, the same bias gives the same answer on every
route, and bad maps get a 400 naming the field."""
from __future__ import annotations

import httpx
import openai
import pytest

MODEL = "demo"
PROMPT = "The function returns"
MESSAGES = [{"role": "user", "content": "What is a list?"}]
TOKENS = 6


@pytest.fixture(scope="module")
def client(shared_server):
    return openai.OpenAI(base_url=f"{shared_server.url}/v1", api_key="unused", max_retries=0)


def post(server, path: str, body: dict) -> dict:
    r = httpx.post(server.url + path, json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def generate(server, ids: list[int], bias: dict[str, float] | None = None) -> dict:
    """Greedy /generate on token ids: what the OpenAI routes must answer for the same prompt."""
    params = {"temperature": 0, "max_new_tokens": TOKENS, **({"logit_bias": bias} if bias else {})}
    return post(server, "/generate", {"input_ids": ids, "sampling_params": params})


def test_banning_the_greedy_token_gives_another_answer_the_same_on_every_route(shared_server, client):
    for route in ("completions", "chat"):
        prompt = {"prompt": PROMPT} if route == "completions" else {"messages": MESSAGES}
        ids = post(shared_server, "/tokenize", {"model": MODEL, **prompt})["tokens"]
        greedy = generate(shared_server, ids)
        ban = {str(greedy["output_ids"][0]): -100}
        banned = generate(shared_server, ids, ban)
        assert banned["output_ids"][0] != greedy["output_ids"][0]
        assert banned["text"] != greedy["text"]
        if route == "completions":
            got = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=TOKENS,
                                            temperature=0, logit_bias=ban).choices[0].text
            plain = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=TOKENS,
                                              temperature=0).choices[0].text
        else:
            got = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=TOKENS,
                                                 temperature=0, logit_bias=ban).choices[0].message.content
            plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=TOKENS,
                                                   temperature=0).choices[0].message.content
        assert (plain, got) == (greedy["text"], banned["text"]), route


def test_a_forced_token_repeats_on_every_route(shared_server, client):
    forced = post(shared_server, "/tokenize", {"model": MODEL, "prompt": " list",
                                               "add_special_tokens": False})["tokens"][-1]
    want = post(shared_server, "/detokenize", {"model": MODEL, "tokens": [forced] * TOKENS})["prompt"]
    bias = {str(forced): 100}
    completion = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=TOKENS,
                                           temperature=0.8, logit_bias=bias)
    assert completion.choices[0].text == want
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=TOKENS,
                                          logit_bias=bias, n=2)
    assert [c.message.content for c in chat.choices] == [want, want]
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=TOKENS,
                                            logit_bias=bias, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == want
    out = post(shared_server, "/generate", {"text": PROMPT, "sampling_params": {
        "max_new_tokens": TOKENS, "logit_bias": bias}})
    assert out["output_ids"] == [forced] * TOKENS and out["text"] == want


@pytest.mark.parametrize("bias, text", [
    ({"999999999": 5}, "token id 999999999 in 'logit_bias' is outside the vocabulary"),
    ({"hello": 5}, "logit_bias keys must be token ids"),
    ({"12": 101}, "logit_bias values must be in [-100, 100]"),
])
def test_bad_biases_get_a_400_naming_the_field(shared_server, client, bias, text):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2, logit_bias=bias)
    error = caught.value.body
    assert text in error["message"] and error["param"] == "logit_bias"
    r = httpx.post(shared_server.url + "/generate", timeout=30, json={
        "text": "a", "sampling_params": {"max_new_tokens": 2, "logit_bias": bias}})
    assert r.status_code == 400
    error = r.json()["error"]
    assert text.replace("'logit_bias'", "'sampling_params.logit_bias'") in error["message"]
    assert error["param"] == "sampling_params.logit_bias"
