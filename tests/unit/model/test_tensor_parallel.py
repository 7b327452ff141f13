"""Tensor parallelism in the model: the shard plan's rules and refusals, and a model split over
two workers (gloo on loopback, a FileStore rendezvous) giving the same greedy tokens as one."""
from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from bastion.model.arch_config import ModelLoadError
from bastion.model.parallel.group import TensorGroup
from bastion.model.parallel.plan import TensorParallel
from test_greedy_matches_transformers import engine_for, random_prompts, run
from tiny_models import make_tiny_model
from tp_workers import tensor_parallel_greedy


def _arch(**overrides):
    from bastion.model.arch import read_arch_config
    from bastion.model.demo import DEMO_MODEL_DIR
    return dataclasses.replace(read_arch_config(DEMO_MODEL_DIR), **overrides)


def test_local_shapes_and_slices_of_worker_one_of_two():
    cfg = _arch(num_heads=4, num_kv_heads=2, head_dim=64, intermediate_size=688)
    tp = TensorParallel(2, 1)
    local = tp.local_config(cfg)
    assert (local.num_heads, local.num_kv_heads, local.intermediate_size) == (2, 1, 344)
    assert tp.row_slice(cfg, "layers.0.self_attn.qkv_proj.weight", 0) == slice(128, 256)
    assert tp.row_slice(cfg, "layers.0.self_attn.qkv_proj.weight", 2) == slice(64, 128)
    assert tp.row_slice(cfg, "layers.0.mlp.gate_up_proj.weight", 1) == slice(344, 688)
    assert tp.column_slice(cfg, "layers.0.self_attn.o_proj.weight") == slice(128, 256)
    assert tp.column_slice(cfg, "layers.0.mlp.down_proj.weight") == slice(344, 688)
    assert tp.row_slice(cfg, "embed_tokens.weight", None) is None
    assert tp.row_slice(cfg, "lm_head.weight", None) == slice(cfg.vocab_size // 2, cfg.vocab_size)
    assert [TensorParallel(3, r).vocab_rows(_arch(vocab_size=10)) for r in range(3)] == [
        slice(0, 4), slice(4, 8), slice(8, 10)]  # the vocabulary-parallel head: the last share is short


def test_fewer_kv_heads_than_workers_are_replicated_to_the_workers_that_use_them():
    cfg = _arch(num_heads=8, num_kv_heads=2, intermediate_size=64)
    starts = [TensorParallel(4, r).kv_head_start(cfg) for r in range(4)]
    assert starts == [0, 0, 1, 1] and TensorParallel(4, 0).local_config(cfg).num_kv_heads == 1


def test_shapes_that_cannot_split_are_refused_with_the_numbers():
    with pytest.raises(ModelLoadError, match="9 query heads do not divide into 2 workers"):
        TensorParallel(2, 0).check(_arch(num_heads=9, num_kv_heads=3))
    with pytest.raises(ModelLoadError, match="3 KV heads neither divide into 2 workers"):
        TensorParallel(2, 0).check(_arch(num_heads=6, num_kv_heads=3))


@pytest.mark.parametrize("name,shared_bytes", [("qwen3", 1 << 20), ("llama-one-kv-head", 0)])
def test_two_workers_give_the_greedy_tokens_of_one(name, shared_bytes, model_paths, tmp_path):
    """Collectives through gloo (0) or shared memory; the same tokens either way (an odd
    vocabulary: the second worker's share of the LM head is one row short)."""
    path = model_paths.get(name) or make_tiny_model(tmp_path / name, "llama", seed=7, vocab_size=501,
                                                    num_key_value_heads=1, num_attention_heads=4)
    prompts = random_prompts(3, (5, 40), 500, seed=31)
    kwargs = dict(dtype="float32", num_kv_blocks=64, block_size=8)
    want = run(engine_for(path, num_kv_blocks=64, block_size=8), prompts, 12)
    workers = tensor_parallel_greedy(path, 2, prompts, 12, tmp_path, shared_bytes=shared_bytes, **kwargs)
    assert workers[0] == workers[1] == want


def test_an_engine_with_two_workers_starts_the_second_and_matches_one(model_paths):
    """The demo model through worker processes; then a dead worker fails the next step."""
    path = model_paths["demo"]
    prompts = random_prompts(3, (5, 40), 500, seed=32)
    want = run(engine_for(path, num_kv_blocks=64, block_size=8), prompts, 10)
    cores = os.sched_getaffinity(0)
    engine = engine_for(path, num_kv_blocks=64, block_size=8, tensor_parallel_size=2)
    worker = engine.workers.procs[0]
    try:
        assert engine.runner.local_arch.num_heads == 2 and worker.poll() is None
        assert run(engine, prompts, 10) == want
        worker.kill()
        worker.wait()
        with pytest.raises(RuntimeError, match="tensor-parallel worker has exited"):
            run(engine, [[5, 6, 7]], 4)
    finally:
        engine.close()
    assert os.sched_getaffinity(0) == cores  # an offline engine leaves its caller's cores alone


def test_closing_an_engine_ends_its_workers(model_paths):
    engine = engine_for(model_paths["qwen3"], num_kv_blocks=16, block_size=8, tensor_parallel_size=2)
    worker = engine.workers.procs[0]
    assert run(engine, [[5, 6, 7, 8]], 3)[0]
    engine.close()
    assert worker.poll() is not None


@pytest.fixture(scope="module")
def synthetic_110m(tmp_path_factory):
    from bastion.bench.workloads import write_synthetic_110m
    return write_synthetic_110m(tmp_path_factory.mktemp("synthetic-110m"))


@pytest.mark.parametrize("name", ["synthetic-110m", "qwen2-qkv-bias"])
def test_the_110m_model_and_qwen2_over_two_worker_processes_give_the_tokens_of_one(name, request, tmp_path):
    """The benchmark's 110M Llama (12 heads, hidden 768) and a Qwen2 with q/k/v biases and a
    tied head, float32, through the engine's own worker processes."""
    path = (request.getfixturevalue("synthetic_110m") if name == "synthetic-110m"
            else make_tiny_model(tmp_path / name, "qwen2", seed=11, tie=True))
    vocab = 32000 if name == "synthetic-110m" else 500
    prompts = random_prompts(4, (5, 60), vocab, seed=33)
    want = run(engine_for(path, num_kv_blocks=64, block_size=8), prompts, 10)
    engine = engine_for(path, num_kv_blocks=64, block_size=8, tensor_parallel_size=2)
    try:
        assert run(engine, prompts, 10) == want
    finally:
        engine.close()


def test_a_worker_that_exits_before_joining_fails_the_group_at_once(tmp_path):
    """Not after the whole rendezvous timeout (gloo's own waits it out): worker 0 sees the
    dead peer and says so (a timeout would say "did not join")."""
    with pytest.raises(RuntimeError, match="exited before joining"):
        TensorGroup(TensorParallel(2, 0), tmp_path / "store", torch.device("cpu"),
                    timeout_s=120, peers_alive=lambda: False)
    with pytest.raises(RuntimeError, match=r"workers \[1\] did not join within 1 s"):
        TensorGroup(TensorParallel(2, 0), tmp_path / "store2", torch.device("cpu"), timeout_s=1)
