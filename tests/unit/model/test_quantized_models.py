"""A model loaded with --quantization int8/int4 gives the same greedy tokens as the same
checkpoint whose linear weights were replaced by their dequantized values (float32)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bastion.model.linear.quantize import (dequantize_int8, int4_group_size, quantize_int4,
                                           quantize_int8)
from bastion.model.linear.quantized import HEAD_METHOD
from test_greedy_matches_transformers import engine_for, random_prompts, run

LINEAR = (".q_proj.", ".k_proj.", ".v_proj.", ".o_proj.", ".gate_proj.", ".up_proj.", ".down_proj.")


def dequantized(method: str, weight: torch.Tensor) -> torch.Tensor:
    weight = weight.float()
    group = int4_group_size(weight.shape[1])
    if method == "int4" and group is not None:
        return quantize_int4(weight, group).dequantize()
    return dequantize_int8(*quantize_int8(weight))


def dequantized_copy(src: Path, dst: Path, method: str) -> Path:
    """`src` with every linear weight replaced by what `method` keeps of it, the LM head by what
    its HEAD_METHOD keeps; a tied head becomes its own tensor (the embedding stays exact, as
    bastion keeps it)."""
    shutil.copytree(src, dst)
    config = json.loads((src / "config.json").read_text())
    tensors: dict[str, torch.Tensor] = {}
    for path in sorted(dst.glob("*.safetensors")):
        tensors.update(load_file(path))
        path.unlink()
    out = {name: t.float() for name, t in tensors.items()}
    if config.get("tie_word_embeddings"):
        out["lm_head.weight"] = out["model.embed_tokens.weight"].clone()
        config["tie_word_embeddings"] = False
    for name, t in out.items():
        if name == "lm_head.weight":
            out[name] = dequantized(HEAD_METHOD[method], t)
        elif name.endswith(".weight") and any(m in name for m in LINEAR):
            out[name] = dequantized(method, t)
    save_file({k: v.contiguous() for k, v in out.items()}, dst / "model.safetensors")
    config["torch_dtype"] = config["dtype"] = "float32"
    (dst / "config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("model", ["demo", "qwen3", "qwen2"])
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_model_matches_dequantized_reference(model, method, model_paths, tmp_path):
    path = model_paths[model] if model != "qwen2" else _tiny_qwen2(tmp_path)
    reference = engine_for(dequantized_copy(path, tmp_path / "reference", method))
    quantized = engine_for(path, quantization=method)
    kernels = {m.kernel.name for m in quantized.runner.model.modules() if getattr(m, "kernel", None)}
    assert kernels and all(k.startswith(method) for k in kernels - {"int8-cpu"}), kernels
    assert quantized.runner.model.lm_head.kernel.name.startswith(HEAD_METHOD[method])
    prompts = random_prompts(6, (1, 40), 500, seed=11)
    assert run(quantized, prompts, 16) == run(reference, prompts, 16)


def _tiny_qwen2(tmp_path: Path) -> Path:
    """Qwen2 has a bias on q/k/v: the quantized kernels add it."""
    from tiny_models import make_tiny_model
    return make_tiny_model(tmp_path / "qwen2", "qwen2", seed=4)
