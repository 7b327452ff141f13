"""The fused one-sequence decode step (model/fused_decode.py) computes what the eager model
computes: its hidden state is checked against the eager forward pass of the very same step,
across architectures (q/k norms, qkv bias, tied heads), dtypes, int8 weights and contexts that
span many KV blocks; and its greedy tokens equal transformers' in float32."""
from __future__ import annotations

import pytest
import torch

from bastion.model.fused_decode import FusedDecoder
from bastion.sampling_params import SamplingParams
from test_greedy_matches_transformers import engine_for, random_prompts, run
from tiny_models import make_tiny_model


@pytest.fixture(scope="module")
def more_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("fused")
    return {"qwen2": make_tiny_model(root / "qwen2", "qwen2", seed=4),
            "llama-tied": make_tiny_model(root / "llama", "llama", seed=5, tie=True)}


def _path(name, model_paths, more_models):
    return model_paths.get(name) or more_models[name]


def _fused_vs_eager(engine, monkeypatch) -> list[float]:
    """Run every fused step eagerly as well (same inputs, same KV); collect relative errors."""
    model = engine.runner.model
    fused, errors = model.fused_decoder, []
    real_step = FusedDecoder.__call__

    def both(self, input_ids, positions, ctx):
        got = real_step(self, input_ids, positions, ctx)
        model.fused_decoder = None
        try:
            want = model(input_ids, positions).float()
        finally:
            model.fused_decoder = fused
        errors.append(((got.float() - want).abs().max() / want.abs().max()).item())
        return got

    monkeypatch.setattr(FusedDecoder, "__call__", both)
    return errors


def _decode(engine, prompt: list[int], max_tokens: int) -> None:
    engine.add_request("r", prompt, SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True))
    for _ in range(max_tokens + 5):
        if not engine.has_unfinished:
            return
        engine.step()


# NOTE: bfloat16's tolerance is wide because the eager model rounds to bfloat16 after every op
# and the fused step keeps float32 between its products (these tiny models' weights are scaled
# up, so their activations are large); a wrong head, block or position is off by far more.
@pytest.mark.parametrize("name", ["demo", "qwen3", "qwen2", "llama-tied"])
@pytest.mark.parametrize("dtype,quantization,tolerance", [
    ("float32", None, 1e-4), ("bfloat16", None, 8e-2), ("float32", "int8", 1e-3)])
def test_fused_step_equals_the_eager_step(name, dtype, quantization, tolerance, model_paths,
                                          more_models, monkeypatch):
    from bastion.config.engine import EngineConfig
    from bastion.engine.core import EngineCore

    engine = EngineCore(EngineConfig.from_kwargs(
        str(_path(name, model_paths, more_models)), dtype=dtype, quantization=quantization,
        num_kv_blocks=64, block_size=4))
    assert engine.runner.model.fused_decoder is not None
    errors = _fused_vs_eager(engine, monkeypatch)
    _decode(engine, random_prompts(1, (45, 45), 500, seed=21)[0], 40)   # 85 positions: 22 blocks
    assert len(errors) == 39 and max(errors) < tolerance, max(errors)


@pytest.mark.parametrize("name", ["qwen2", "llama-tied"])
def test_fused_greedy_tokens_equal_transformers(name, model_paths, more_models, hf_reference):
    path = _path(name, model_paths, more_models)
    engine = engine_for(path, block_size=8)
    assert engine.runner.model.fused_decoder is not None
    prompts = random_prompts(1, (20, 20), 500, seed=22)
    assert run(engine, prompts, 32)[0] == hf_reference.greedy(path, prompts[0], 32)


def test_enforce_eager_turns_the_fused_step_off(model_paths):
    assert engine_for(model_paths["demo"], enforce_eager=True).runner.model.fused_decoder is None


def test_decoder_refuses_a_context_longer_than_its_block_table(model_paths):
    decoder = engine_for(model_paths["demo"], block_size=4).runner.model.fused_decoder.decoder
    with pytest.raises(RuntimeError, match="context longer than its block table"):
        decoder.step(5, 8, 8, torch.tensor([0, 1], dtype=torch.long), 9)
    with pytest.raises(RuntimeError, match="token id out of range"):
        decoder.step(10**9, 0, 0, torch.tensor([0], dtype=torch.long), 1)


# NOTE: the step's scratch buffers are per thread; a team smaller than omp_get_max_threads()
# (OMP_THREAD_LIMIT, OMP_DYNAMIC) gives each thread a longer run of positions than a full team,
# so buffers sized for the full team overflowed (glibc: "double free or corruption").
@pytest.mark.parametrize("omp_env", [{"OMP_THREAD_LIMIT": "3"}, {"OMP_DYNAMIC": "true"}],
                         ids=["thread-limit-3", "dynamic"])
def test_a_fused_step_with_a_smaller_team_than_asked_for_stays_in_its_buffers(omp_env):
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[2] / "support" / "fused_thread_limit.py"
    proc = subprocess.run([sys.executable, "-P", str(script), "4"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **omp_env})
    assert proc.returncode == 0, proc.stderr[-2000:]
    tokens = json.loads(proc.stdout.strip().splitlines()[-1])
    assert tokens["fused"] == tokens["eager"]
