"""GGUF files written by the `gguf` package load into the same model as their safetensors folder.

F32 files must give the folder's greedy tokens exactly (float32). A lossy file (F16, BF16,
Q8_0) is compared with its exact reference: the folder with every tensor passed through the gguf
package's own quantize and dequantize (`gguf_files.rounded_folder`); its greedy tokens must be
that folder's, token for token. Q4_0/Q4_1 matrices are checked where they land, the layers'
`Int4Weight`s, against the gguf package's dequantization of the same bytes."""
from __future__ import annotations

import logging

import gguf
import numpy as np
import pytest
import torch

from bastion.config.engine import EngineConfig
from bastion.engine.core import EngineCore
from bastion.model.arch import read_arch_config
from bastion.model.fill import empty_model
from bastion.model.gguf.reader import open_gguf
from bastion.model.gguf.tensors import read_int4
from bastion.model.gguf.weights import load_gguf_weights
from bastion.sampling_params import SamplingParams
from gguf_files import rounded_folder, write_gguf
from tiny_models import make_tiny_model

# the demo's intermediate size (688) is no multiple of 32: its down_proj stays F16, as
# llama.cpp falls back for a tensor its type cannot block
DEMO_DOWN = {f"blk.{i}.ffn_down.weight": "F16" for i in range(4)}


@pytest.fixture(scope="module")
def folders(demo_model, tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("gguf-src")
    return {"llama": demo_model,
            "qwen2": make_tiny_model(base / "qwen2", "qwen2", seed=3),
            "qwen3": make_tiny_model(base / "qwen3", "qwen3", seed=4, tie=True)}


def greedy(path, prompts: list[list[int]], max_tokens: int = 16) -> list[list[int]]:
    engine = EngineCore(EngineConfig.from_kwargs(str(path), dtype="float32", num_kv_blocks=64))
    for i, prompt in enumerate(prompts):
        engine.add_request(str(i), prompt, SamplingParams(temperature=0, max_tokens=max_tokens))
    out: dict[str, list[int]] = {}
    for _ in range(200):
        if not engine.has_unfinished:
            break
        for delta in engine.step():
            out.setdefault(delta.request_id, []).extend(delta.new_token_ids)
    return [out[str(i)] for i in range(len(prompts))]


PROMPTS = [[7, 300, 41, 99, 12, 250], [5, 9, 200, 17], list(range(20, 60, 3))]


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
def test_f32_gguf_gives_the_folders_greedy_tokens(arch, folders, tmp_path):
    path = write_gguf(folders[arch], tmp_path / f"{arch}.gguf", "F32")
    ours, theirs = read_arch_config(path), read_arch_config(folders[arch])
    for field in ("architecture", "vocab_size", "hidden_size", "intermediate_size", "num_layers",
                  "num_heads", "num_kv_heads", "head_dim", "rope_theta", "tie_word_embeddings",
                  "qkv_bias", "qk_norm"):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.torch_dtype == "float32"
    assert greedy(path, PROMPTS) == greedy(folders[arch], PROMPTS)


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0"])
def test_lossy_gguf_gives_its_rounded_folders_greedy_tokens(qtype, folders, tmp_path):
    overrides = DEMO_DOWN if qtype == "Q8_0" else None
    path = write_gguf(folders["llama"], tmp_path / "m.gguf", qtype, overrides=overrides)
    reference = rounded_folder(folders["llama"], tmp_path / "rounded", qtype, overrides)
    assert greedy(path, PROMPTS) == greedy(reference, PROMPTS)


def _load_unprepared(path):
    cfg = read_arch_config(path)
    model = empty_model(cfg, torch.float32, torch.device("cpu"), 64)
    load_gguf_weights(model, path, cfg)
    return model


def _reference_weights(folder) -> dict[str, torch.Tensor]:
    """A safetensors folder's weights under bastion's module names (qkv and gate_up merged)."""
    from safetensors.torch import load_file

    t = {k.removeprefix("model."): v for k, v in load_file(str(folder / "model.safetensors")).items()}
    out = {"embed_tokens": t["embed_tokens.weight"]}
    for i in range(4):
        p = f"layers.{i}."
        out[p + "self_attn.qkv_proj"] = torch.cat([t[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        out[p + "self_attn.o_proj"] = t[p + "self_attn.o_proj.weight"]
        out[p + "mlp.gate_up_proj"] = torch.cat([t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"]])
        out[p + "mlp.down_proj"] = t[p + "mlp.down_proj.weight"]
    return out


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_q4_matrices_load_as_int4_weights(qtype, folders, tmp_path, caplog):
    # layer 1's v in Q8_0: its merged qkv_proj must be widened whole
    overrides = {**DEMO_DOWN, "blk.1.attn_v.weight": "Q8_0"}
    path = write_gguf(folders["llama"], tmp_path / "m.gguf", qtype, overrides=overrides)
    ref = _reference_weights(rounded_folder(folders["llama"], tmp_path / "r", qtype, overrides))
    with caplog.at_level(logging.INFO, logger="bastion.model.gguf.weights"):
        model = _load_unprepared(path)
    modules = dict(model.named_modules())
    int4 = {name for name, m in modules.items() if getattr(m, "prequantized", None) is not None}
    assert int4 == {n for n in ref if "proj" in n and "down" not in n} - {"layers.1.self_attn.qkv_proj"}
    for name in int4:  # q and k rows in Hugging Face's order again
        assert torch.equal(modules[name].prequantized.dequantize(), ref[name]), name
    # widened: the embedding (Q4 too), layer 1's mixed qkv, the F16 down projections
    for name in ("embed_tokens", "layers.1.self_attn.qkv_proj", "layers.0.mlp.down_proj"):
        assert torch.equal(modules[name].weight, ref[name]), name
    assert f"{qtype}: 21 run quantized (int4), 3 widened to float32" in caplog.text
    assert "F16: 4 as float32" in caplog.text and "Q8_0: 1 widened to float32" in caplog.text


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1"])
def test_int4_weight_dequantizes_like_the_gguf_package(qtype, tmp_path):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal((48, 128)) * rng.uniform(0.01, 2, (48, 1))).astype(np.float32)
    values[3, :32] = 0.0  # a block of zeros: scale 0
    kind = gguf.GGMLQuantizationType[qtype]
    w = gguf.GGUFWriter(str(tmp_path / "t.gguf"), "llama")
    w.add_tensor("x.weight", gguf.quants.quantize(values, kind), raw_dtype=kind)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tensor = open_gguf(tmp_path / "t.gguf").tensors[0]
    weight = read_int4(tensor)
    assert weight.q.dtype == torch.uint8 and int(weight.q.max()) <= 15 and weight.group_size == 32
    assert weight.scale.shape == (48, 4) and weight.minimum.shape == (48, 4)
    want = torch.from_numpy(gguf.quants.dequantize(np.asarray(tensor.data), kind).copy())
    assert torch.equal(weight.dequantize(), want)
    assert torch.equal(weight.rows(10, 5).dequantize(), want[10:15])


def test_k_quant_tensors_are_widened_with_the_gguf_package(folders, tmp_path):
    """gguf-py cannot write K-quants, so two matrices get random Q4_K and Q6_K blocks (their
    float16 scales set small and finite); each parameter must be gguf's dequantization."""
    rng = np.random.default_rng(1)
    raw = {}
    for name, kind, rows in (("blk.0.attn_output.weight", "Q6_K", 256), ("blk.2.ffn_up.weight", "Q4_K", 688)):
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[kind]]
        blocks = rng.integers(0, 256, (rows, 256 // block, size), dtype=np.uint8)
        scale = np.full((rows, 256 // block, 1), 0.01, np.float16).view(np.uint8)
        if kind == "Q6_K":  # d is the block's last 2 bytes
            blocks[..., -2:] = scale
        else:  # d and dmin are its first 4
            blocks[..., 0:2], blocks[..., 2:4] = scale, scale
        raw[name] = (blocks.reshape(rows, -1), kind)
    path = write_gguf(folders["llama"], tmp_path / "k.gguf", "F32", raw=raw)
    model = _load_unprepared(path)
    tensors = {t.name: t for t in open_gguf(path).tensors}
    for name, module, rows in (("blk.0.attn_output.weight", "layers.0.self_attn.o_proj", slice(None)),
                               ("blk.2.ffn_up.weight", "layers.2.mlp.gate_up_proj", slice(688, None))):
        t = tensors[name]
        want = torch.from_numpy(gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).copy())
        assert torch.isfinite(want).all()
        assert torch.equal(model.get_submodule(module).weight[rows], want), name


def test_llama3_rope_scaling_as_rope_freqs(tmp_path):
    """llama.cpp writes Llama 3's rope scaling as a rope_freqs tensor of per-frequency divisors
    (computed here as its converter does); greedy tokens must be the folder's (float32)."""
    import math

    scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
    folder = make_tiny_model(tmp_path / "llama3", "llama", seed=5, rope_scaling=scaling, rope_theta=500000.0)
    dim, factors = 16, []  # head_dim 64 // 4 heads = 16
    for freq in 1.0 / (500000.0 ** (np.arange(0, dim, 2) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < 64 / 4.0:
            factors.append(1.0)
        elif wavelen > 64 / 1.0:
            factors.append(8.0)
        else:
            smooth = (64 / wavelen - 1.0) / (4.0 - 1.0)
            factors.append(1 / ((1 - smooth) / 8.0 + smooth))
    assert len(set(factors)) == 3  # all three regimes occur
    path = write_gguf(folder, tmp_path / "l3.gguf", "F32",
                      edit=lambda t: t.update({"rope_freqs.weight": np.array(factors, np.float32)}))
    assert read_arch_config(path).rope_scaling["rope_type"] == "freq_factors"
    prompts = [list(range(3, 90, 2)), [9, 8, 7]]
    assert greedy(path, prompts, 24) == greedy(folder, prompts, 24)
    plain = write_gguf(folder, tmp_path / "plain.gguf", "F32")  # the divisors matter
    assert greedy(plain, prompts, 24) != greedy(folder, prompts, 24)
