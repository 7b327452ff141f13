"""The engine core's request groups: one place knows each request's client and when it ends."""
from __future__ import annotations

import pytest

from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.engine.outputs import FinishReason
from bastion.sampling_params import SamplingParams

PROMPT = [5, 17, 99, 23, 42, 8, 300, 12, 77]


@pytest.fixture(scope="module")
def engine(tiny_qwen3) -> EngineCore:
    return EngineCore(EngineConfig.from_kwargs(str(tiny_qwen3), dtype="float32",
                                               num_kv_blocks=256, block_size=4))


def test_every_delta_of_a_request_routes_to_its_client_until_the_next_step(engine):
    engine.add_request("a", PROMPT, SamplingParams(temperature=0, max_tokens=3), client=2)
    engine.add_request("b", PROMPT, SamplingParams(n=2, temperature=0, max_tokens=5), client=7)
    routed: list[tuple[str, int, bool]] = []
    while engine.has_unfinished:
        routed += [(d.request_id, engine.client_of(d.request_id), d.finished) for d in engine.step()]
    assert {(rid, client) for rid, client, _ in routed} == {("a", 2), ("b", 7)}
    assert sum(finished for rid, _, finished in routed if rid == "b") == 2
    engine.step()
    with pytest.raises(KeyError):
        engine.client_of("a")


def test_a_request_id_is_in_use_until_every_sequence_has_ended(engine):
    engine.add_request("c", PROMPT, SamplingParams(n=2, temperature=0, max_tokens=20), client=1)
    engine.step()
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("c", PROMPT, SamplingParams())
    assert [d.finish_reason for d in engine.abort_request("c", 0)] == [FinishReason.ABORT]
    with pytest.raises(ValueError, match="already in use"):
        engine.add_request("c", PROMPT, SamplingParams())
    ended = engine.abort_request("c")
    assert [(d.index, d.finish_reason) for d in ended] == [(1, FinishReason.ABORT)]
    assert engine.client_of("c") == 1 and not engine.has_unfinished
    engine.add_request("c", PROMPT, SamplingParams(temperature=0, max_tokens=2), client=4)
    assert engine.client_of("c") == 4
    while engine.has_unfinished:
        engine.step()


def test_the_seeds_of_n_sequences_wrap_at_64_bits_and_a_failed_group_leaves_nothing(engine, monkeypatch):
    top = 2**63 - 1
    engine.add_request("w", PROMPT, SamplingParams(n=3, seed=top, max_tokens=2))
    assert [r.params.seed for r in engine._groups["w"].sequences] == [top, -2**63, -2**63 + 1]
    while engine.has_unfinished:
        engine.step()
    # a sequence that cannot be made (here: the second) leaves no sibling scheduled
    import bastion.engine.request as core
    made = []

    def failing(*args, index=0, **kwargs):
        if index == 1:
            raise ValueError("cannot make this sequence")
        made.append(index)
        return real(*args, index=index, **kwargs)
    real = core.Request
    monkeypatch.setattr(core, "Request", failing)
    with pytest.raises(ValueError, match="cannot make"):
        engine.add_request("f", PROMPT, SamplingParams(n=2, max_tokens=2))
    assert made == [0] and not engine.has_unfinished
    assert engine.step() == []


def test_a_program_can_import_transformers_right_after_making_an_engine():
    """The engine loads llguidance's tokenizer on a background thread at once, which imports
    transformers; transformers replaces its module in sys.modules when its import ends, so a
    thread importing it meanwhile got the half-made module (`from transformers import X`:
    ImportError, seen from the offline bench's baseline)."""
    import subprocess
    import sys

    code = ("from bastion.config.engine import EngineConfig\n"
            "from bastion.engine.core import EngineCore\n"
            "from bastion.model.demo import DEMO_MODEL_DIR\n"
            "engine = EngineCore(EngineConfig.from_kwargs(str(DEMO_MODEL_DIR)))\n"
            "from transformers import AutoModelForCausalLM, AutoTokenizer\n")
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
