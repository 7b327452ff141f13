"""Fixed-seed benchmark workloads (`workload` picks one from the bench's flags) and the synthetic
~110M Llama checkpoint."""
from __future__ import annotations

import argparse
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

PROMPT_VOCAB = 4096  # prompt token ids stay below this where the bench does not read the model's vocabulary
MIXED_PROMPTS, MIXED_OUTPUTS = (32, 512), (16, 256)  # token counts, inclusive
SHARED_PREFIX, SHARED_SUFFIX, SHARED_OUTPUT = 384, 32, 64
WARMUP_SEED_OFFSET = 1_000_003  # warm-up requests are drawn far from any pair's seed


@dataclass(frozen=True)
class BenchRequest:
    prompt_token_ids: list[int]
    output_len: int


def mixed_workload(num_requests: int, vocab_size: int, seed: int = 0,
                   prompt_range: tuple[int, int] = MIXED_PROMPTS,
                   output_range: tuple[int, int] = MIXED_OUTPUTS) -> list[BenchRequest]:
    """Prompt lengths and output lengths uniform in their ranges (inclusive)."""
    rng = np.random.default_rng(seed)
    reqs = []
    for _ in range(num_requests):
        n = int(rng.integers(prompt_range[0], prompt_range[1] + 1))
        out = int(rng.integers(output_range[0], output_range[1] + 1))
        reqs.append(BenchRequest(rng.integers(10, vocab_size, n).tolist(), out))
    return reqs


def shared_prefix_workload(num_requests: int, vocab_size: int, seed: int = 0,
                           prefix_len: int = SHARED_PREFIX, suffix_len: int = SHARED_SUFFIX,
                           output_len: int = SHARED_OUTPUT) -> list[BenchRequest]:
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


def longest_request(args: argparse.Namespace) -> int:
    """The most tokens (prompt and output) any request of the workload can take."""
    if args.workload == "mixed":
        return MIXED_PROMPTS[1] + (args.max_tokens or MIXED_OUTPUTS[1])
    return SHARED_PREFIX + SHARED_SUFFIX + (args.max_tokens or SHARED_OUTPUT)


def pair_requests(args: argparse.Namespace, vocab: int) -> Callable[[int], list[BenchRequest]]:
    """Pair i's requests: the workload drawn with seed --workload-seed + i (the same for every
    side of the pair; new prompts each pair, so no pair is served from an earlier one's cache)."""
    def requests_of_pair(pair: int) -> list[BenchRequest]:
        return workload(argparse.Namespace(**{**vars(args), "workload_seed": args.workload_seed + pair}), vocab)
    return requests_of_pair


def warmup_requests(args: argparse.Namespace, vocab: int) -> list[BenchRequest]:
    """One untimed batch before a side's first timed run: `--concurrency` requests of the
    workload's shape, drawn apart from every pair's."""
    seeded = argparse.Namespace(**{**vars(args), "workload_seed": args.workload_seed + WARMUP_SEED_OFFSET})
    return workload(seeded, vocab)[:args.concurrency]


@contextmanager
def bench_inputs(args: argparse.Namespace) -> Iterator[tuple[str, str, int]]:
    """What a comparing bench serves: the model (`bench_model`, written into a temporary folder
    that lives as long as the block), its name for the report, and the vocabulary its prompts
    draw from."""
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as tmp:
        yield bench_model(args, Path(tmp))


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
