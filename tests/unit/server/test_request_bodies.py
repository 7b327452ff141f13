"""Request bodies in the front end's terms: one sampling builder for every route, errors that
name the client's field, stop strings, prompts and budgets, and the caller's cache salt."""
from __future__ import annotations

import pytest

from bastion.config.security import Limits
from bastion.security.principal import Principal
from bastion.server.caller import Caller, tenant_salt
from bastion.server.http.errors import APIError
from bastion.server.prompt import Budget, ChatPrompt, TextPrompt, TokenPrompt
from bastion.server.routes.protocol import (ChatCompletionRequest, CompletionRequest,
                                            TokenizeRequest, stop_strings)
from bastion.server.routes.sglang import GenerateRequest

MSG = [{"role": "user", "content": "hi", "name": "ann"}]


def test_openai_and_sglang_fields_give_the_same_sampling_params():
    openai = CompletionRequest(model="m", prompt="a", n=2, temperature=0.5, seed=7, min_tokens=1,
                               stop_token_ids=[3], top_k=5).sampling(9)
    sglang = GenerateRequest(text="a", sampling_params={
        "n": 2, "temperature": 0.5, "sampling_seed": 7, "min_new_tokens": 1,
        "stop_token_ids": [3], "top_k": 5}).sampling(9)
    assert openai == sglang
    assert (openai.max_tokens, openai.seed, openai.min_tokens, openai.top_p) == (9, 7, 1, 1.0)


@pytest.mark.parametrize("body, param", [
    (lambda: CompletionRequest(model="m", prompt="a", top_p=0.0), "top_p"),
    (lambda: CompletionRequest(model="m", prompt="a", n=0), "n"),
    (lambda: CompletionRequest(model="m", prompt="a", logprobs=21), "logprobs"),
    (lambda: CompletionRequest(model="m", prompt="a", min_tokens=5), "min_tokens"),
    (lambda: GenerateRequest(text="a", sampling_params={"top_p": 0.0}), "sampling_params.top_p"),
    (lambda: GenerateRequest(text="a", sampling_params={"min_new_tokens": 5}),
     "sampling_params.min_new_tokens"),
])
def test_sampling_errors_name_the_clients_field(body, param):
    with pytest.raises(APIError) as caught:
        body().sampling(3)
    assert caught.value.status == 400 and caught.value.param == param


def test_logit_bias_keys_become_token_ids_on_every_route():
    bias = {"7": -100, "12": 2.5}
    for body in (CompletionRequest(model="m", prompt="a", logit_bias=bias),
                 ChatCompletionRequest(model="m", messages=MSG, logit_bias=bias),
                 GenerateRequest(text="a", sampling_params={"logit_bias": bias})):
        assert body.sampling(3).logit_bias == {7: -100.0, 12: 2.5}
    assert CompletionRequest(model="m", prompt="a").sampling(3).logit_bias is None


@pytest.mark.parametrize("bias, text", [
    ({"abc": 1}, "keys must be token ids"),
    ({"-3": 1}, "keys must be token ids"),
    ({"1.5": 1}, "keys must be token ids"),
    ({" 4": 1}, "keys must be token ids"),
    ({"4": 100.5}, "values must be in [-100, 100]"),
    ({"4": -1000}, "values must be in [-100, 100]"),
    ({str(i): 1 for i in range(1025)}, "at most 1024"),
])
def test_logit_bias_errors_name_the_field(bias, text):
    for body, param in ((lambda: CompletionRequest(model="m", prompt="a", logit_bias=bias), "logit_bias"),
                        (lambda: GenerateRequest(text="a", sampling_params={"logit_bias": bias}),
                         "sampling_params.logit_bias")):
        with pytest.raises(APIError) as caught:
            body().sampling(3)
        assert caught.value.status == 400 and caught.value.param == param
        assert text in caught.value.message


def test_stop_strings():
    assert stop_strings(None, "stop") == [] and stop_strings("x", "stop") == ["x"]
    assert GenerateRequest(text="a", sampling_params={"stop": ["x", "y"]}).stop_strings == ["x", "y"]
    with pytest.raises(APIError) as caught:
        GenerateRequest(text="a", sampling_params={"stop": [""]}).stop_strings
    assert caught.value.param == "sampling_params.stop"


def test_prompts_and_budgets():
    chat = ChatCompletionRequest(model="m", messages=MSG, max_completion_tokens=4)
    assert chat.to_prompt() == ChatPrompt([{"role": "user", "content": "hi", "name": "ann"}])
    assert chat.budget() == Budget(4, None, "max_completion_tokens")
    assert CompletionRequest(model="m", prompt=[[1, 2]]).to_prompt() == TokenPrompt([1, 2], "prompt")
    assert CompletionRequest(model="m", prompt="a").budget() == Budget(None, 16)
    generate = GenerateRequest(text="a", max_tokens=3)
    assert generate.to_prompt() == TextPrompt("a", "text")
    assert generate.budget() == Budget(3, 128, "max_tokens")
    assert GenerateRequest(input_ids=[1], sampling_params={"max_new_tokens": 2}).budget() == \
        Budget(2, 128, "sampling_params.max_new_tokens")
    assert TokenizeRequest(prompt="a", add_special_tokens=False).to_prompt() == \
        TextPrompt("a", "prompt", add_special_tokens=False)
    with pytest.raises(APIError, match="exactly one"):
        TokenizeRequest().check()


def test_the_caller_carries_an_opaque_salt_per_tenant():
    def principal(name, tenant):
        return Principal(name, "key", tenant, frozenset({"inference"}), ("demo",), Limits())
    a, b = Caller.of(principal("a", "acme")), Caller.of(principal("b", "acme"))
    other = Caller.of(principal("c", "globex"))
    assert a.cache_salt == b.cache_salt == tenant_salt("acme") != other.cache_salt
    assert "acme" not in a.cache_salt
    assert a.limit_key == "key:a" and a.may_use("demo") and not a.may_use("other")
