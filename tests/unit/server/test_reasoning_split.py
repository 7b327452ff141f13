"""The reasoning splitter on canned model outputs: each format's edge cases whole, and every
output streamed in random chunk splits (markers cut anywhere), whose joined splits must equal
the whole text's; where an output starts is read from the prompt's tail."""
from __future__ import annotations

import random

import pytest

from bastion.server.reasoning.choose import format_for_template
from bastion.server.reasoning.formats import FORMATS, Phase, format_named
from bastion.server.reasoning.splitter import ReasoningSplitter, Split, split_text

QWEN3, R1 = FORMATS["qwen3"], FORMATS["deepseek_r1"]

# (format, first phase, model output, expected reasoning, expected content)
CASES = [
    # Qwen3, the model opens the block itself (its original template)
    (QWEN3, Phase.OPENING, "<think>\nLet me see.\n</think>\n\nParis.", "\nLet me see.\n", "\n\nParis."),
    (QWEN3, Phase.OPENING, "\n<think>a</think>b", "a", "b"),
    (QWEN3, Phase.OPENING, "Paris.", "", "Paris."),  # answered without thinking
    (QWEN3, Phase.OPENING, "  Paris.", "", "  Paris."),
    (QWEN3, Phase.OPENING, "<thin", "", "<thin"),  # not a marker after all
    (QWEN3, Phase.OPENING, "<thinking>x", "", "<thinking>x"),
    (QWEN3, Phase.OPENING, "x </think> y", "", "x </think> y"),  # no opening: all answer
    (QWEN3, Phase.OPENING, "<think>cut off by the length lim", "cut off by the length lim", ""),
    (QWEN3, Phase.OPENING, "<think></think>", "", ""),
    (QWEN3, Phase.OPENING, "<think>a</think>b</think><think>c", "a", "b</think><think>c"),
    (QWEN3, Phase.OPENING, "", "", ""),
    # Qwen3 with enable_thinking false: the prompt closed the block, all is answer
    (QWEN3, Phase.ANSWER, "Paris.", "", "Paris."),
    (QWEN3, Phase.ANSWER, "<think>x</think>y", "", "<think>x</think>y"),
    # a prompt that opened the block (QwQ, Qwen3 thinking templates), or DeepSeek-R1
    (QWEN3, Phase.STARTING, "I think.</think>Paris.", "I think.", "Paris."),
    (R1, Phase.STARTING, "Hmm, 9.11 < 9.8?\n</think>\n\n9.8", "Hmm, 9.11 < 9.8?\n", "\n\n9.8"),
    (R1, Phase.STARTING, "<think>\nhm</think>ok", "\nhm", "ok"),  # R1 writing its own <think>
    (R1, Phase.STARTING, "\n\n<think>hm</think>ok", "hm", "ok"),
    (R1, Phase.STARTING, "no end in sight <think> a", "no end in sight <think> a", ""),
    (R1, Phase.STARTING, "</think>ok", "", "ok"),
    (R1, Phase.STARTING, "  ", "  ", ""),
    (R1, Phase.STARTING, "<thi", "<thi", ""),
    (R1, Phase.STARTING, "a </thin", "a </thin", ""),
    (R1, Phase.STARTING, "é😀</think>ü😀", "é😀", "ü😀"),
]


def _split(text: str, rng: random.Random) -> list[str]:
    cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 12)))) if len(text) > 1 else []
    return [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]


@pytest.mark.parametrize("fmt, phase, text, reasoning, content", CASES)
def test_whole_text_split(fmt, phase, text, reasoning, content):
    assert split_text(ReasoningSplitter(fmt, phase), text) == Split(reasoning, content)


@pytest.mark.parametrize("fmt, phase, text, reasoning, content", CASES)
def test_random_chunk_splits_give_the_whole_split(fmt, phase, text, reasoning, content):
    rng = random.Random(text)
    for _ in range(40):
        splitter, got = ReasoningSplitter(fmt, phase), Split()
        for chunk in _split(text, rng):
            got += splitter.feed(chunk)
        assert got + splitter.finish() == Split(reasoning, content)


def test_every_single_character_chunking():
    text = "<think>a</think>b"
    splitter, got = ReasoningSplitter(QWEN3, Phase.OPENING), Split()
    for ch in text:
        got += splitter.feed(ch)
    assert got + splitter.finish() == Split("a", "b")


def test_thinking_streams_as_it_comes_and_holds_back_only_a_possible_marker():
    splitter = ReasoningSplitter(R1, Phase.STARTING)
    assert splitter.feed("Let me ") == Split("Let me ")
    assert splitter.feed("think </") == Split("think ")  # "</" may start </think>
    assert splitter.feed("b> tags") == Split("</b> tags")
    assert splitter.feed("</think>The") == Split("", "The")
    assert splitter.feed(" answer") == Split("", " answer")


@pytest.mark.parametrize("fmt, tail, phase", [
    (QWEN3, "<|im_start|>assistant\n", Phase.OPENING),
    (QWEN3, "<|im_start|>assistant\n<think>\n\n</think>\n\n", Phase.ANSWER),  # enable_thinking false
    (QWEN3, "<|im_start|>assistant\n<think>\n", Phase.STARTING),
    (QWEN3, "<think>old</think> turn<|im_start|>assistant\n", Phase.OPENING),  # only the tail counts
    (R1, "<｜Assistant｜><think>\n", Phase.STARTING),
    (R1, "<｜Assistant｜>", Phase.STARTING),  # R1 starts inside the thinking, opened or not
    (R1, "<｜Assistant｜><think>\n\n</think>\n\n", Phase.ANSWER),
])
def test_where_an_output_starts_is_read_from_the_prompt_tail(fmt, tail, phase):
    assert fmt.first_phase(tail) is phase


def test_parser_names_in_both_spellings_and_the_template_pick():
    assert format_named("deepseek-r1") is format_named("deepseek_r1") is R1
    assert format_named("qwen3") is QWEN3
    with pytest.raises(KeyError):
        format_named("granite")
    assert format_for_template("{{ '<think>' }}x{{ '</think>' }}") is QWEN3
    assert format_for_template("<｜Assistant｜>{{ c.split('</think>')[-1] }}") is R1
    assert format_for_template({"default": "plain", "tool_use": "a</think>"}) is QWEN3
    assert format_for_template("{{ messages }}") is None and format_for_template(None) is None
