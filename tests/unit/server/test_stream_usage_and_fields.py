"""What `stream_options` asks of a stream's usage (vLLM's continuous_usage_stats), and which
fields are accepted and ignored and which are refused with a 400 naming them."""
from __future__ import annotations

import pytest

from bastion.server.http.errors import APIError
from bastion.server.routes.openai_answers import _OMIT, StreamUsage
from bastion.server.routes.protocol import ChatCompletionRequest, CompletionRequest, StreamOptions

MSG = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]


class Counts:
    prompt_tokens, completion_tokens = 5, 3


@pytest.mark.parametrize("options, include, running", [
    (None, False, _OMIT),
    ({"include_usage": False, "continuous_usage_stats": True}, False, _OMIT),  # as vLLM: needs include
    ({"include_usage": True}, True, None),
    ({"include_usage": True, "continuous_usage_stats": True}, True,
     {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}),
])
def test_stream_usage(options, include, running):
    usage = StreamUsage.of(None if options is None else StreamOptions(**options))
    assert usage.include == include and usage.running(Counts()) == running


def test_guidellm_bodies_are_accepted():
    chat = ChatCompletionRequest(model="m", messages=MSG, stream=True, max_completion_tokens=32,
                                 stop=None, ignore_eos=True,
                                 stream_options={"include_usage": True, "continuous_usage_stats": True})
    chat.check()
    assert chat.budget().requested == 32 and chat.sampling(32).ignore_eos
    completion = CompletionRequest(model="m", prompt="a b", stream=True, max_tokens=32, stop=None,
                                   ignore_eos=True,
                                   stream_options={"include_usage": True, "continuous_usage_stats": True})
    completion.check()
    assert completion.sampling(32).ignore_eos and completion.stop_strings == []


IGNORED = {"user": "u1", "metadata": {"k": "v"}, "service_tier": "auto", "store": False,
           "parallel_tool_calls": True, "prompt_cache_key": "k", "safety_identifier": "s",
           "priority": 0, "request_id": "r", "tool_choice": "none", "tools": [],
           "use_beam_search": False, "include_stop_str_in_output": False, "modalities": ["text"],
           "spaces_between_special_tokens": True, "length_penalty": 1.0}


def test_fields_that_do_not_change_the_answer_are_ignored():
    ChatCompletionRequest(model="m", messages=MSG, stream=True, **IGNORED,
                          stream_options={"include_usage": True, "include_obfuscation": False}).check()
    CompletionRequest(model="m", prompt="a", **IGNORED).check()


@pytest.mark.parametrize("field, value", [
    ("tool_choice", "required"), ("tools", [{"type": "function", "function": {"name": "f"}}]),
])
def test_tool_fields_are_refused_where_no_tools_are_read(field, value):
    with pytest.raises(APIError) as caught:
        CompletionRequest(model="m", prompt="a", **{field: value}).check()
    assert caught.value.status == 400 and caught.value.param == field


@pytest.mark.parametrize("field, value", [
    ("use_beam_search", True), ("include_stop_str_in_output", True), ("modalities", ["text", "audio"]),
    ("web_search_options", {}), ("allowed_token_ids", [1]),
    ("spaces_between_special_tokens", False), ("length_penalty", 2.0),
    ("guided_whitespace_pattern", " *"), ("structural_tag", "{}"), ("suffix", "x"),
])
def test_fields_that_change_the_answer_are_refused_by_name(field, value):
    for body in (ChatCompletionRequest(model="m", messages=MSG, **{field: value}),
                 CompletionRequest(model="m", prompt="a", **{field: value})):
        with pytest.raises(APIError) as caught:
            body.check()
        assert caught.value.status == 400 and caught.value.param == field
