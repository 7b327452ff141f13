"""Fixed-seed benchmark workloads (`workload` picks one from the bench's flags) and the synthetic
~110M Llama checkpoint."""
from __future__ import annotations

import argparse
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

PROMPT_VOCAB = 4096  # prompt token ids stay below this where the bench does not read the model's vocabulary


@dataclass(frozen=True)
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int


def mixed_workload(num_requests: int, vocab_size: int, seed: int = 0,
                   prompt_range: tuple[int, int] = (32, 512),
                   output_range: tuple[int, int] = (16, 256)) -> list[BenchRequest]:
    """Prompt lengths and output lengths uniform in their ranges (inclusive)."""
    rng = np.random.default_rng(seed)
    reqs = []
    for _ in range(num_requests):
        n = int(rng.integers(prompt_range[0], prompt_range[1] + 1))
        out = int(rng.integers(output_range[0], output_range[1] + 1))
        reqs.append(BenchRequest(rng.integers(10, vocab_size, n).tolist(), out))
    return reqs


def shared_prefix_workload(num_requests: int, vocab_size: int, seed: int = 0,
                           prefix_len: int = 384, suffix_len: int = 32,
                           output_len: int = 64) -> list[BenchRequest]:
    """Every request starts with the same prefix and ends with its own short suffix."""
    rng = np.random.default_rng(seed)
    prefix = rng.integers(10, vocab_size, prefix_len).tolist()
    return [BenchRequest(prefix + rng.integers(10, vocab_size, suffix_len).tolist(), output_len)
            for _ in range(num_requests)]


def workload(args: argparse.Namespace, vocab: int) -> list[BenchRequest]:
    if args.workload == "mixed":
        reqs = mixed_workload(args.num_requests or 128, vocab, args.workload_seed)
    else:
        reqs = shared_prefix_workload(args.num_requests or 64, vocab, args.workload_seed)
    if args.max_tokens:
        reqs = [BenchRequest(r.prompt_token_ids, args.max_tokens) for r in reqs]
    return reqs


@contextmanager
def bench_inputs(args: argparse.Namespace) -> Iterator[tuple[str, str, list]]:
    """What a comparing bench serves and sends: the model (`bench_model`, written into a
    temporary folder that lives as long as the block), its name for the report, the requests."""
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as tmp:
        model, label, vocab = bench_model(args, Path(tmp))
        yield model, label, workload(args, vocab)


def bench_model(args: argparse.Namespace, tmp: Path) -> tuple[str, str, int]:
    """The model a comparing bench serves: the synthetic 110M Llama (`--synthetic-110m`, written
    into `tmp`), `--model`, or the demo model. Returns its folder, its name for the report, and
    the vocabulary its prompts draw from."""
    from bastion.model.arch import read_arch_config

    if args.synthetic_110m:
        path = str(write_synthetic_110m(tmp / "synthetic-110m"))
        label = "synthetic-110m"
    elif args.model:
        path = label = args.model
    else:
        from bastion.model.demo import default_model_path
        path = label = str(default_model_path())
    return path, label, min(read_arch_config(path).vocab_size, 32000)


def write_synthetic_110m(out: Path, seed: int = 0) -> Path:
    """A random-weight Llama (hidden 768, 12 layers, vocab 32000, ~110M params) in bfloat16."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2048,
                         num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    write_word_tokenizer(out, config.vocab_size)
    return out


def write_word_tokenizer(out: Path, vocab_size: int) -> None:
    """A tokenizer whose token i is the word `t<i>`, so a server can run a weights-only model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"t{i}": i for i in range(vocab_size)}, unk_token="t0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="t0", bos_token="t1",
                            eos_token="t2").save_pretrained(out)
