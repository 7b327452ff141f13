"""The real SmolLM2-135M-Instruct Q4_1 GGUF (llama.cpp's converter, Q/K rows permuted) against the
bfloat16 folder transformers' own GGUF loader makes from it (tests/support/real_checkpoint.py)."""
from __future__ import annotations

import dataclasses

import torch
from safetensors.torch import load_file

from bastion.model.arch import read_arch_config
from bastion.model.fill import empty_model
from bastion.model.gguf.weights import load_gguf_weights
from bastion.model.tokenizer import load_tokenizer

TEXTS = ["Hello world!", "def f(x):\n    return x ** 2  # square\n", "  naïve café — 東京 🚀 <|im_end|>"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}]


def test_tokenizer_and_chat_template_match_the_folder(smollm2_gguf_file, smollm2_checkpoint):
    ours, theirs = load_tokenizer(smollm2_gguf_file), load_tokenizer(smollm2_checkpoint)
    assert ours.chat_template and ours.chat_template == theirs.chat_template
    assert (ours.bos_token, ours.eos_token) == (theirs.bos_token, theirs.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert ours.all_special_tokens == theirs.all_special_tokens
    assert len(ours) == len(theirs) == 49152
    for text in TEXTS:
        assert ours(text).input_ids == theirs(text).input_ids, text
    prompt = ours.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert prompt == theirs.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)


def test_arch_matches_the_folders_config(smollm2_gguf_file, smollm2_checkpoint):
    ours, theirs = read_arch_config(smollm2_gguf_file), read_arch_config(smollm2_checkpoint)
    assert dataclasses.replace(ours, torch_dtype=theirs.torch_dtype) == theirs
    assert ours.eos_token_ids == (2,) and ours.tie_word_embeddings and ours.num_kv_heads == 3


def test_weights_match_the_folder(smollm2_gguf_file, smollm2_checkpoint):
    """Each Q4_1 layer's Int4Weight (q and k rows back in Hugging Face's order), widened and rounded
    to bfloat16, is the folder's weight bit for bit; so are the widened Q8_0 embedding and norms."""
    cfg = read_arch_config(smollm2_gguf_file)
    model = empty_model(cfg, torch.float32, torch.device("cpu"), 16)
    load_gguf_weights(model, smollm2_gguf_file, cfg)
    folder = {k.removeprefix("model."): v for k, v in load_file(str(smollm2_checkpoint / "model.safetensors")).items()}
    for i in (0, 17, 29):
        p = f"layers.{i}."
        expect = {"self_attn.qkv_proj": torch.cat([folder[p + f"self_attn.{x}_proj.weight"] for x in "qkv"]),
                  "self_attn.o_proj": folder[p + "self_attn.o_proj.weight"],
                  "mlp.gate_up_proj": torch.cat([folder[p + "mlp.gate_proj.weight"], folder[p + "mlp.up_proj.weight"]]),
                  "mlp.down_proj": folder[p + "mlp.down_proj.weight"]}
        for name, want in expect.items():
            int4 = model.get_submodule(p + name).prequantized
            assert int4 is not None, name
            assert torch.equal(int4.dequantize().to(torch.bfloat16), want), p + name
        assert torch.equal(model.get_submodule(p + "input_layernorm").weight.to(torch.bfloat16),
                           folder[p + "input_layernorm.weight"])
    assert torch.equal(model.embed_tokens.weight.to(torch.bfloat16), folder["embed_tokens.weight"])
