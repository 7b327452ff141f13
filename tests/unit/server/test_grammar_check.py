"""The API server's grammar check with real worker processes: verdicts that name the field, the
size and time bounds, the verdict cache, and workers that hold no secret and outlive nothing."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest
from llguidance import LLMatcher, LLTokenizer

from bastion.config.engine import StructuredOutputConfig
from bastion.model.demo import DEMO_MODEL_DIR
from bastion.model.tokenizer import load_tokenizer
from bastion.server.grammar_check import GrammarChecker
from bastion.server.http.errors import APIError
from bastion.structured.spec import StructuredOutputs
from bastion.structured.tokenizer import grammar_tokenizer, tokenizer_json

TREE = {"type": "object", "properties": {"name": {"type": "string"},
                                         "children": {"type": "array", "items": {"$ref": "#"}}},
        "required": ["name", "children"]}


def slow_schema(depth: int = 12) -> str:
    """Inline-nested oneOf: a legitimate schema whose compile takes a tenth of a second or more
    (the text doubles with each level; still under 300 KB)."""
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"oneOf": [schema, {"type": "object", "properties": {"x": schema}}]}
    return json.dumps(schema)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(DEMO_MODEL_DIR)


def checker(tokenizer, **config) -> GrammarChecker:
    return GrammarChecker(StructuredOutputConfig(**config), tokenizer_json(tokenizer), len(tokenizer),
                          [tokenizer.eos_token_id])


async def refusal(check: GrammarChecker, spec: StructuredOutputs, field: str = "f") -> APIError:
    with pytest.raises(APIError) as caught:
        await check.check(spec, field)
    assert caught.value.status == 400 and caught.value.param == field
    assert caught.value.code == "invalid_structured_output"
    return caught.value


@pytest.mark.parametrize("spec, text", [
    (StructuredOutputs(json='{"type": "frob"}'), "Invalid type: frob"),
    (StructuredOutputs(json='{"$ref": "#/$defs/nope"}'), "does not exist"),
    (StructuredOutputs(json='{"$ref": "#"}'), "no base case"),
    (StructuredOutputs(json='{"type": "string", "format": "credit-card"}'), "Unknown format"),
    (StructuredOutputs(json='{"type": "object"'), "not valid JSON"),
    (StructuredOutputs(json='[1]'), "must be a JSON object"),
    (StructuredOutputs(json='{"type": "integer", "minimum": -100000000000000000000}'), "JSON"),
    (StructuredOutputs(json='{"type": "array", "items": ' * 5000 + "{}" + "}" * 5000), "nested too deeply"),
    (StructuredOutputs(regex="[a-"), "unclosed character class"),
    (StructuredOutputs(grammar="start: foo"), "unknown name"),
    (StructuredOutputs(grammar="root ::= ("), "GBNF grammar does not parse"),
])
def test_bad_constraints_get_a_400_saying_why(tokenizer, spec, text):
    async def run():
        check = checker(tokenizer)
        try:
            error = await refusal(check, spec, "structured_outputs.x")
            assert text in error.message and "'structured_outputs.x'" in error.message
        finally:
            await check.close()
    asyncio.run(run())


def test_good_constraints_pass_and_verdicts_are_cached(tokenizer):
    async def run():
        check = checker(tokenizer)
        try:
            good = [StructuredOutputs(json=json.dumps(TREE)), StructuredOutputs(regex="[0-9]{3}"),
                    StructuredOutputs(choice=["yes", "no"]), StructuredOutputs(json_object=True),
                    StructuredOutputs(grammar='root ::= "a" | "b"'), StructuredOutputs(grammar='start: "x"+')]
            for spec in good:
                await check.check(spec, "f")
            assert check.compiles == len(good)
            for spec in good:  # the cache answers
                await check.check(spec, "f")
            bad = StructuredOutputs(json='{"type": "frob"}')
            await asyncio.gather(*(refusal(check, bad) for _ in range(5)))  # one compile, shared
            await refusal(check, bad)
            assert check.compiles == len(good) + 1
            assert len(check.worker_pids()) <= 2
        finally:
            await check.close()
    asyncio.run(run())


def test_the_size_bound_names_both_numbers_and_the_flag(tokenizer):
    async def run():
        check = checker(tokenizer, structured_output_max_bytes=100)
        spec = StructuredOutputs(regex="a" * 101)
        error = await refusal(check, spec, "guided_regex")
        assert "101 bytes" in error.message and "100 bytes" in error.message
        assert "--structured-output-max-bytes" in error.message
        assert check.compiles == 0 and check.worker_pids() == []
        await check.check(StructuredOutputs(regex="a" * 100), "guided_regex")
        await check.close()
    asyncio.run(run())


def test_a_compile_past_the_time_bound_kills_its_worker_and_the_next_check_gets_a_new_one(tokenizer):
    async def run():
        check = checker(tokenizer, structured_output_compile_timeout=0.01,
                        structured_output_max_bytes=2**20)
        try:
            await check.check(StructuredOutputs(regex="a+"), "f")  # starts a worker: not timed
            first = check.worker_pids()
            error = await refusal(check, StructuredOutputs(json=slow_schema()), "response_format")
            assert "took longer than 0.01 s" in error.message
            assert "--structured-output-compile-timeout" in error.message
            assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                           for p in first if p not in check.worker_pids())
            await refusal(check, StructuredOutputs(json=slow_schema()))  # cached: no new worker killed
            await check.check(StructuredOutputs(regex="b+"), "f")
            assert check.worker_pids() and set(check.worker_pids()) != set(first)
        finally:
            await check.close()
    asyncio.run(run())


def test_workers_get_no_secret_cap_their_memory_and_end_with_close(tokenizer, monkeypatch):
    monkeypatch.setenv("BASTION_API_KEY", "sk-secret-secret")
    monkeypatch.setenv("HF_TOKEN", "hf-secret")

    async def run():
        check = checker(tokenizer)
        await check.check(StructuredOutputs(regex="a"), "f")
        pids = check.worker_pids()
        (pid,) = pids
        environ = open(f"/proc/{pid}/environ", "rb").read()
        assert b"secret" not in environ and b"BASTION_API_KEY" not in environ
        limits = open(f"/proc/{pid}/limits").read()
        address = next(line for line in limits.splitlines() if line.startswith("Max address space"))
        assert "unlimited" not in address.split()[3]
        assert psutil.Process(pid).cmdline()[-1] == "bastion.structured.check_worker"
        await check.close()
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    asyncio.run(run())


def test_a_worker_dies_with_its_api_server_even_mid_compile():
    """A parent killed with SIGKILL (no close, perhaps mid-compile) leaves no worker behind."""
    script = textwrap.dedent(f"""
        import asyncio, os, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_grammar_check import checker, slow_schema
        from bastion.model.tokenizer import load_tokenizer
        from bastion.model.demo import DEMO_MODEL_DIR
        from bastion.structured.spec import StructuredOutputs

        async def main():
            check = checker(load_tokenizer(DEMO_MODEL_DIR), structured_output_compile_timeout=600,
                            structured_output_max_bytes=2**24)
            await check.check(StructuredOutputs(regex="a"), "f")
            print(check.worker_pids()[0], flush=True)
            await check.check(StructuredOutputs(json=slow_schema(14)), "f")
        asyncio.run(main())
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    try:
        worker = psutil.Process(int(parent.stdout.readline()))
        assert worker.ppid() == parent.pid
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        worker.wait(30)  # raises TimeoutExpired if it outlived its parent
    finally:
        if parent.poll() is None:
            parent.kill()


def test_the_workers_vocabulary_is_the_engines(tokenizer):
    vocab = len(tokenizer) + 64  # a logits width past the tokenizer's vocabulary
    engine = grammar_tokenizer(tokenizer, vocab, [tokenizer.eos_token_id])
    worker = LLTokenizer(tokenizer_json(tokenizer), n_vocab=vocab, eos_token=[tokenizer.eos_token_id])
    assert (worker.vocab_size, worker.eos_tokens) == (engine.vocab_size, engine.eos_tokens)
    text = "The function returns a list"
    assert worker.tokenize_str(text) == engine.tokenize_str(text)
    for spec in (StructuredOutputs(json=json.dumps(TREE)), StructuredOutputs(regex="[a-")):
        grammar = spec.grammar_text()
        assert LLMatcher.validate_grammar(grammar, worker) == LLMatcher.validate_grammar(grammar, engine)


def test_a_vocabulary_llguidance_cannot_read_refuses_constraints_without_restarting_workers():
    async def run():
        check = GrammarChecker(StructuredOutputConfig(), '{"model": {"type": "Unknown"}}', 100, [0])
        for _ in range(2):
            error = await refusal(check, StructuredOutputs(regex="a"), "guided_regex")
            assert "unavailable for this model" in error.message
        assert check.unavailable and check.worker_pids() == [] and check.compiles == 0
        await check.close()
    asyncio.run(run())
