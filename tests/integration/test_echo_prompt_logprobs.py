"""Log-probabilities of given text through a real server and the openai SDK: `echo` with
`logprobs` (and `max_tokens: 0`) on /v1/completions, vLLM's `prompt_logprobs` on completions
and chat; the values equal transformers' float32 log-softmax within 1e-4, with the prefix cache
cold and warm, on the demo model and on SmolLM2-135M. Each is served by one rank behind one API
server, so a prompt's second request finds the first's blocks in the one prefix cache."""
from __future__ import annotations

import httpx
import openai
import pytest
import torch

from server_process import ServerProcess

MODEL = "demo"
TEXT = ("The function returns a list of the values in the order they were given, and raises "
        "an error when the argument is not a sequence of numbers.")
MESSAGES = [{"role": "user", "content": "What does the function return?"}]


def reference(model_dir, prompt: list[int]) -> torch.Tensor:
    """transformers' float32 log-softmax at every prompt position [P, V]."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.inference_mode():
        return torch.log_softmax(model(torch.tensor([prompt])).logits[0].float(), dim=-1)


def tokenize(server, **prompt) -> list[int]:
    r = httpx.post(f"{server.url}/tokenize", json=prompt, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["tokens"]


def client_of(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def check_echo(choice, ids: list[int], expected: torch.Tensor, top: int) -> None:
    """The legacy logprobs object of an echoed prompt: null first, then each token's value."""
    lp = choice.logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) >= len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    for t in range(1, len(ids)):
        assert abs(lp.token_logprobs[t] - float(expected[t - 1, ids[t]])) < 1e-4, t
        best = max(lp.top_logprobs[t].values())
        assert abs(best - float(expected[t - 1].max())) < 1e-4, t
        assert lp.tokens[t] in lp.top_logprobs[t] and len(lp.top_logprobs[t]) <= top + 1


def check_vllm_shape(entries, ids: list[int], expected: torch.Tensor, top: int) -> None:
    """vLLM's `prompt_logprobs`: null first, then {token id: {logprob, rank, decoded_token}}."""
    assert len(entries) == len(ids) and entries[0] is None
    for t in range(1, len(ids)):
        own = entries[t][str(ids[t])]
        row = expected[t - 1]
        assert abs(own["logprob"] - float(row[ids[t]])) < 1e-4, t
        assert own["rank"] == int((row > row[ids[t]]).sum()) + 1 and isinstance(own["decoded_token"], str)
        ranked = sorted((e["rank"], int(k)) for k, e in entries[t].items() if e["rank"] <= top)
        assert [r for r, _ in ranked][:top] == list(range(1, top + 1))
        assert [k for _, k in ranked][:top] == row.topk(top).indices.tolist()


@pytest.fixture(scope="module")
def demo_server():
    proc = ServerProcess("--dtype", "float32", "--served-model-name", MODEL)
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def demo_ids(demo_server) -> list[int]:
    return tokenize(demo_server, model=MODEL, prompt=TEXT)


@pytest.fixture(scope="module")
def demo_expected(demo_model, demo_ids) -> torch.Tensor:
    return reference(demo_model, demo_ids)


def test_echo_with_max_tokens_zero_scores_the_prompt_cold_and_warm(demo_server, demo_ids, demo_expected):
    client = client_of(demo_server)
    cold = client.completions.create(model=MODEL, prompt=demo_ids, echo=True, logprobs=1, max_tokens=0)
    (choice,) = cold.choices
    assert choice.text == httpx.post(f"{demo_server.url}/detokenize",
                                     json={"tokens": demo_ids}).json()["prompt"]
    assert choice.finish_reason == "length" and cold.usage.completion_tokens == 0
    check_echo(choice, demo_ids, demo_expected, 1)
    assert len(choice.logprobs.tokens) == len(demo_ids)
    # the prefix cache now holds the prompt (a plain request hits it); echo bypasses it, same values
    plain = client.completions.create(model=MODEL, prompt=demo_ids, max_tokens=1, temperature=0)
    assert plain.usage.prompt_tokens_details.cached_tokens > 0
    warm = client.completions.create(model=MODEL, prompt=demo_ids, echo=True, logprobs=1, max_tokens=0)
    assert warm.usage.prompt_tokens_details.cached_tokens == 0
    check_echo(warm.choices[0], demo_ids, demo_expected, 1)


def test_echo_of_a_text_prompt_prepends_it_streamed_or_not(demo_server):
    client = client_of(demo_server)
    whole = client.completions.create(model=MODEL, prompt=TEXT, echo=True, logprobs=2, max_tokens=4,
                                      temperature=0)
    plain = client.completions.create(model=MODEL, prompt=TEXT, max_tokens=4, temperature=0)
    assert whole.choices[0].text == TEXT + plain.choices[0].text
    assert whole.choices[0].model_extra["prompt_logprobs"][0] is None  # vLLM: echo's logprobs, as prompt_logprobs
    chunks = list(client.completions.create(model=MODEL, prompt=TEXT, echo=True, logprobs=2, max_tokens=4,
                                            temperature=0, stream=True))
    assert chunks[0].choices[0].text.startswith(TEXT)  # the prompt comes in the first chunk
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert streamed == whole.choices[0].logprobs.tokens
    batch = client.completions.create(model=MODEL, prompt=[TEXT, "A list"], echo=True, max_tokens=0, n=2)
    assert [c.text for c in batch.choices] == [TEXT, TEXT, "A list", "A list"]


def test_prompt_logprobs_on_completions_and_chat(demo_server, demo_ids, demo_expected, demo_model):
    client = client_of(demo_server)
    out = client.completions.create(model=MODEL, prompt=demo_ids, max_tokens=2, temperature=0,
                                    extra_body={"prompt_logprobs": 2, "ignore_eos": True})
    check_vllm_shape(out.choices[0].model_extra["prompt_logprobs"], demo_ids, demo_expected, 2)
    assert out.choices[0].logprobs is None and out.usage.completion_tokens == 2
    chat_ids = tokenize(demo_server, model=MODEL, messages=MESSAGES)
    chat = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2,
                                          extra_body={"prompt_logprobs": 2, "ignore_eos": True})
    check_vllm_shape(chat.model_extra["prompt_logprobs"], chat_ids, reference(demo_model, chat_ids), 2)


@pytest.mark.parametrize("route, body, param", [
    ("completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("completions", {"prompt": "hi", "prompt_logprobs": 21}, "prompt_logprobs"),
    ("completions", {"prompt": "hi", "prompt_logprobs": 1, "stream": True}, "prompt_logprobs"),
    ("completions", {"prompt": "hi", "prompt_logprobs": -1}, "prompt_logprobs"),
    ("chat/completions", {"messages": MESSAGES, "prompt_logprobs": 21}, "prompt_logprobs"),
    ("chat/completions", {"messages": MESSAGES, "echo": True}, "echo"),
])
def test_what_is_not_served_is_refused_naming_the_field(demo_server, route, body, param):
    r = httpx.post(f"{demo_server.url}/v1/{route}", json={"model": MODEL, **body}, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.text


@pytest.fixture(scope="module")
def smollm2_server(smollm2_checkpoint):
    proc = ServerProcess(str(smollm2_checkpoint), "--served-model-name", "smollm2", "--dtype", "float32",
                         "--max-model-len", "512")
    yield proc
    proc.kill()


def test_smollm2_echo_and_prompt_logprobs_equal_transformers_cold_and_warm(smollm2_server, smollm2_checkpoint):
    client = client_of(smollm2_server)
    ids = tokenize(smollm2_server, model="smollm2", prompt=TEXT)
    expected = reference(smollm2_checkpoint, ids)
    for _ in ("cold", "warm"):  # the first request leaves the prompt's blocks in the cache
        out = client.completions.create(model="smollm2", prompt=TEXT, echo=True, logprobs=1, max_tokens=0,
                                        extra_body={"prompt_logprobs": 2, "ignore_eos": True})
        check_echo(out.choices[0], ids, expected, 1)
        check_vllm_shape(out.choices[0].model_extra["prompt_logprobs"], ids, expected, 2)
        assert out.choices[0].text == TEXT
    plain = client.completions.create(model="smollm2", prompt=TEXT, max_tokens=1)
    assert plain.usage.prompt_tokens_details.cached_tokens > 0  # the cache was warm
