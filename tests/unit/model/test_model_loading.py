"""Loading checkpoints: architectures, shards, RoPE scaling, dtypes and clear errors."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.model.arch import ModelLoadError
from bastion.sampling_params import SamplingParams
from tiny_models import make_tiny_model

PROMPT = [4, 9, 33, 71, 120, 250, 11, 3]


def greedy(path, n=12, **kwargs) -> list[int]:
    engine = EngineCore(EngineConfig.from_kwargs(str(path), num_kv_blocks=64, block_size=4, **kwargs))
    engine.add_request("x", PROMPT, SamplingParams(temperature=0, max_tokens=n))
    tokens = []
    while engine.has_unfinished:
        tokens += [t for o in engine.step() for t in o.new_token_ids]
    return tokens


@pytest.mark.parametrize("arch, extra", [
    ("llama", {"tie": True}),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
               "rope_theta": 500000.0}),
    ("mistral", {}),
    ("qwen2", {}),
    ("qwen3", {"tie": True}),
])
def test_architectures_match_transformers(tmp_path, hf_reference, arch, extra):
    path = make_tiny_model(tmp_path / arch, arch, seed=3, **extra)
    assert greedy(path, dtype="float32") == hf_reference.greedy(path, PROMPT, 12)


def test_sharded_checkpoint_loads(tmp_path, hf_reference):
    from transformers import AutoModelForCausalLM

    path = make_tiny_model(tmp_path / "one", "llama", seed=4)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.save_pretrained(tmp_path / "sharded", safe_serialization=True, max_shard_size="100KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 1
    assert greedy(tmp_path / "sharded", dtype="float32") == hf_reference.greedy(path, PROMPT, 12)


def test_bfloat16_runs_on_cpu(tiny_qwen3):
    assert len(greedy(tiny_qwen3, dtype="bfloat16")) == 12


@pytest.fixture
def model_copy(tmp_path, tiny_qwen3):
    dest = tmp_path / "copy"
    shutil.copytree(tiny_qwen3, dest)
    return dest


def edit_weights(path, edit) -> None:
    tensors = load_file(path / "model.safetensors")
    edit(tensors)
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def load(path, **kwargs):
    return EngineCore(EngineConfig.from_kwargs(str(path), num_kv_blocks=8, **kwargs))


def test_not_a_directory(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a directory"):
        load(tmp_path / "nowhere")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="is not a model folder: config.json is missing"):
        load(tmp_path)


def test_unsupported_architecture_names_the_supported_ones(model_copy):
    cfg = json.loads((model_copy / "config.json").read_text())
    cfg["architectures"] = ["GPT2LMHeadModel"]
    (model_copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"unsupported architecture \['GPT2LMHeadModel'\]; "
                                             "supported: LlamaForCausalLM, MistralForCausalLM"):
        load(model_copy)


def test_missing_tensor(model_copy):
    edit_weights(model_copy, lambda t: t.pop("model.norm.weight"))
    with pytest.raises(ModelLoadError, match="tensors missing from checkpoint: norm.weight"):
        load(model_copy)


def test_half_merged_projection(model_copy):
    edit_weights(model_copy, lambda t: t.pop("model.layers.1.self_attn.k_proj.weight"))
    with pytest.raises(ModelLoadError, match=r"layers.1.self_attn.qkv_proj.weight \(has parts \[0, 2\] "
                                             r"of \[0, 1, 2\]: half-merged\)"):
        load(model_copy)


def test_unexpected_tensor(model_copy):
    edit_weights(model_copy, lambda t: t.update({"model.layers.0.mystery.weight": torch.zeros(2)}))
    with pytest.raises(ModelLoadError, match="unexpected tensors in checkpoint: model.layers.0.mystery.weight"):
        load(model_copy)


def test_wrong_shape(model_copy):
    edit_weights(model_copy, lambda t: t.update({"model.norm.weight": torch.zeros(3)}))
    with pytest.raises(ModelLoadError, match=r"model.norm.weight has shape \(3,\), expected \(64,\)"):
        load(model_copy)


def test_pickled_weights_are_never_loaded(model_copy):
    (model_copy / "model.safetensors").unlink()
    (model_copy / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match="no \\*.safetensors weights .found pytorch_model.bin; "
                                             "bastion never loads pickled weights"):
        load(model_copy)


def test_float16_on_cpu_is_refused(tiny_qwen3):
    with pytest.raises(ModelLoadError, match="--dtype float16 is not supported on CPU"):
        load(tiny_qwen3, dtype="float16", device="cpu")


def test_max_model_len_beyond_the_model(tiny_qwen3):
    with pytest.raises(ModelLoadError, match="--max-model-len 4096 exceeds the model's context of 1024"):
        load(tiny_qwen3, max_model_len=4096)


def test_native_bfloat16_path(tiny_qwen3, monkeypatch):
    """On CPUs with bf16 units the model and KV cache stay bfloat16 (forced here)."""
    import bastion.model.loader as loader

    monkeypatch.setattr(loader, "cpu_has_native_bf16", lambda: True)
    engine = EngineCore(EngineConfig.from_kwargs(str(tiny_qwen3), dtype="bfloat16", num_kv_blocks=16))
    assert engine.runner.dtype == torch.bfloat16
    assert engine.runner.model.attention_layers[0].k_cache.dtype == torch.bfloat16
    engine.add_request("x", PROMPT, SamplingParams(temperature=0, max_tokens=5))
    tokens = []
    while engine.has_unfinished:
        tokens += [t for o in engine.step() for t in o.new_token_ids]
    assert len(tokens) == 5
