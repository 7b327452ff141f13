"""Tool-call parsers on canned model outputs: the whole text's parse, and the same text streamed
in random chunk splits, whose reassembled deltas must equal it."""
from __future__ import annotations

import json
import random

import pytest

from bastion.server.tools.calls import assemble, parse_all
from bastion.server.tools.constrained import CallArray, NamedCall
from bastion.server.tools.hermes import HermesParser
from bastion.server.tools.llama3_json import Llama3JsonParser, WholeMessageCalls
from bastion.server.tools.mistral import MistralParser

W = {"city": "Paris", "unit": "c"}
WJ = json.dumps(W)

# (parser, model output, expected content, expected [(name, arguments as a value)])
CASES = [
    # Hermes / Qwen
    (HermesParser, f'<tool_call>\n{{"name": "weather", "arguments": {WJ}}}\n</tool_call>', "", [("weather", W)]),
    (HermesParser, f'Let me check.\n\n<tool_call>{{"name": "weather", "arguments": {WJ}}}</tool_call>\n'
                   f'<tool_call>{{"name": "time", "arguments": {{}}}}</tool_call>\n',
     "Let me check.", [("weather", W), ("time", {})]),
    (HermesParser, "Just text, with a < sign and <tool_ca but no call.\n", "Just text, with a < sign and <tool_ca but no call.\n", []),
    (HermesParser, "<tool_call>not json</tool_call> after", "<tool_call>not json</tool_call> after", []),
    (HermesParser, f'<tool_call>{{"name": "weather", "arguments": {WJ}}}', "", [("weather", W)]),  # never closed
    (HermesParser, '<tool_call>{"name": "weather", "argu', '<tool_call>{"name": "weather", "argu', []),
    (HermesParser, f'<tool_call>{{"name": "t", "arguments": "{{\\"a\\": 1}}"}}</tool_call>', "", [("t", {"a": 1})]),
    (HermesParser, 'Text <tool_call>{"name": "é", "arguments": {"q": "naïve </tool"}}</tool_call> tail',
     "Text tail", [("é", {"q": "naïve </tool"})]),
    # Llama 3 JSON
    (Llama3JsonParser, f'{{"name": "weather", "parameters": {WJ}}}', "", [("weather", W)]),
    (Llama3JsonParser, f'<|python_tag|>{{"name": "weather", "parameters": {WJ}}}', "", [("weather", W)]),
    (Llama3JsonParser, f' {{"name": "a", "parameters": {{}}}}; {{"name": "b", "arguments": {WJ}}}', "",
     [("a", {}), ("b", W)]),
    (Llama3JsonParser, "The answer is {not a call}.", "The answer is {not a call}.", []),
    (Llama3JsonParser, '{"answer": 42}', '{"answer": 42}', []),
    (Llama3JsonParser, "  <|python", "  <|python", []),
    (Llama3JsonParser, "<|python_tag|>brave_search.call(query=\"x\")", "<|python_tag|>brave_search.call(query=\"x\")", []),
    # Hermes whose markers the tokenizer dropped (special tokens): bare objects, else Hermes
    (lambda: WholeMessageCalls(otherwise=HermesParser()), f'\n{{"name": "weather", "arguments": {WJ}}}\n',
     "", [("weather", W)]),
    (lambda: WholeMessageCalls(otherwise=HermesParser()), 'Hi <tool_call>{"name": "t", "arguments": {}}</tool_call>',
     "Hi", [("t", {})]),
    (lambda: WholeMessageCalls(otherwise=HermesParser()), '{"answer": 1} <tool_call>x', '{"answer": 1} <tool_call>x', []),
    # Mistral
    (MistralParser, f'[TOOL_CALLS] [{{"name": "weather", "arguments": {WJ}}}]', "", [("weather", W)]),
    (MistralParser, f'Sure. [TOOL_CALLS][{{"name": "a", "arguments": {{}}}}, {{"name": "b", "arguments": {WJ}}}]',
     "Sure.", [("a", {}), ("b", W)]),
    (MistralParser, f'[{{"name": "weather", "arguments": {WJ}}}]', "", [("weather", W)]),  # marker stripped
    (MistralParser, f'[TOOL_CALLS]weather[ARGS]{WJ}[TOOL_CALLS]time[ARGS]{{}}', "", [("weather", W), ("time", {})]),
    (MistralParser, "[1] is a footnote, [TOOL_C is not a marker", "[1] is a footnote, [TOOL_C is not a marker", []),
    (MistralParser, "[TOOL_CALLS] oops", "[TOOL_CALLS] oops", []),
    (MistralParser, "[ {\"a\": 1} ]", "[ {\"a\": 1} ]", []),
    (MistralParser, "Plain answer.", "Plain answer.", []),
]


def _split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12)))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


def _streamed(parser, chunks: list[str]):
    content, pieces = "", []
    for chunk in chunks:
        parsed = parser.feed(chunk)
        content, pieces = content + parsed.content, pieces + parsed.calls
    parsed = parser.finish()
    return content + parsed.content, pieces + parsed.calls


def _simple(calls):
    return [(c.name, json.loads(c.arguments)) for c in calls]


@pytest.mark.parametrize("make, text, content, calls", CASES)
def test_whole_text_parse(make, text, content, calls):
    got_content, got_calls = parse_all(make(), text)
    assert (got_content, _simple(got_calls)) == (content, calls)
    assert all(c.id.startswith("call_") and len(c.id) > 10 for c in got_calls)
    assert len({c.id for c in got_calls}) == len(got_calls)


@pytest.mark.parametrize("make, text, content, calls", CASES)
def test_random_chunk_splits_reassemble_to_the_whole_parse(make, text, content, calls):
    whole_content, whole_calls = parse_all(make(), text)
    rng = random.Random(text)
    for _ in range(25):
        got_content, pieces = _streamed(make(), _split(text, rng))
        assert got_content == whole_content
        assert [(c.name, c.arguments) for c in assemble(pieces)] == \
               [(c.name, c.arguments) for c in whole_calls]
        firsts = {}
        for piece in pieces:  # the first piece of a call names it, later ones carry arguments only
            if piece.index not in firsts:
                firsts[piece.index] = piece
                assert piece.name and piece.id
            else:
                assert piece.name is None and piece.id is None
        assert sorted(firsts) == list(range(len(firsts)))


def test_named_call_streams_every_character_as_arguments():
    text = json.dumps({"city": "Paris", "days": [1, 2]})
    chunks = _split(text, random.Random(1))
    parser = NamedCall("weather")
    first = parser.feed(chunks[0])
    assert first.calls[0].name == "weather" and first.calls[0].arguments == chunks[0]
    rest = [parser.feed(c).calls for c in chunks[1:]]
    assert [pieces[0].arguments for pieces in rest] == chunks[1:]
    assert parse_all(NamedCall("weather"), text)[1][0].arguments == text
    assert parse_all(NamedCall("f"), "")[1][0].arguments == ""  # a call even when nothing came


ARRAY = ('[{"name":"weather","parameters":{"city":"Pa\\"ris}","days":[1,{"x":2}]}},'
         '{"name":"time","parameters":{}}]')


def test_call_array_streams_arguments_as_they_come():
    parser = CallArray("parameters")
    pieces = []
    for ch in ARRAY:  # one character at a time, as tokens may come
        pieces += parser.feed(ch).calls
    pieces += parser.finish().calls
    calls = assemble(pieces)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == \
        [("weather", {"city": 'Pa"ris}', "days": [1, {"x": 2}]}), ("time", {})]
    assert calls[0].arguments == '{"city":"Pa\\"ris}","days":[1,{"x":2}]}'  # the model's own text
    assert sum(1 for p in pieces if p.index == 0) > 10  # streamed, not held to the end


@pytest.mark.parametrize("text", [ARRAY, '[ { "name" : "a" , "parameters" : { "k" : [ 1 ] } } ]',
                                  '[{"parameters": {"k": 1}, "name": "a"}]', '[{"name":"a","parameters":{"k":'])
def test_call_array_chunk_splits(text):
    whole = [(c.name, c.arguments) for c in parse_all(CallArray(), text)[1]]
    assert whole  # every case above names a call
    for seed in range(20):
        _, pieces = _streamed(CallArray(), _split(text, random.Random(seed)))
        assert [(c.name, c.arguments) for c in assemble(pieces)] == whole


def test_call_array_reads_keys_in_any_order_and_whitespace():
    assert [(c.name, json.loads(c.arguments)) for c in
            parse_all(CallArray(), '[{"parameters": {"k": 1}, "name": "a"}]')[1]] == [("a", {"k": 1})]
    assert parse_all(CallArray(), '[ { "name" : "a" , "parameters" : { "k" : [ 1 ] } } ]')[1][0].arguments \
        == '{ "k" : [ 1 ] }'
