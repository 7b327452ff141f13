"""Command-line flags for the engine, named as vLLM's where the meaning is the same."""
from __future__ import annotations

import argparse
import logging

from bastion.config.engine import ATTENTION_BACKENDS, QUANTIZATIONS, SUPPORTED_DTYPES, EngineConfig, parse_bytes

logger = logging.getLogger(__name__)

# vLLM's and SGLang's grammar backends: accepted so their command lines work; llguidance serves all
GRAMMAR_BACKENDS = ("llguidance", "auto", "guidance", "xgrammar", "outlines", "lm-format-enforcer")

DTYPE_SPELLINGS = {"half": "float16", "float": "float32"}  # vLLM's and SGLang's other names


def _dtype(text: str) -> str:
    return DTYPE_SPELLINGS.get(text, text)


def _backend(text: str) -> str:
    """vLLM spells backends in capitals with underscores (TORCH_SDPA): the same names here."""
    return text.lower().replace("_", "-")


def _on_off(text: str) -> bool:
    """vLLM's boolean config values: true/false (1/0)."""
    value = {"true": True, "1": True, "false": False, "0": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return value


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    """Add the engine's flags to a sub-command's parser."""
    g = parser.add_argument_group("engine")
    g.add_argument("--dtype", default="auto", type=_dtype, choices=SUPPORTED_DTYPES,
                   help="weights and activations dtype; auto = the checkpoint's (bfloat16 for "
                        "float16 checkpoints on CPU); half and float, as vLLM and SGLang spell "
                        "them, mean float16 and float32")
    g.add_argument("--quantization", "-q", default=None, choices=QUANTIZATIONS,
                   help="weight-only quantization of the linear layers at load time: int8 (one scale "
                        "per output channel) or int4 (a scale and minimum per group of 32 inputs; "
                        "the LM head stays int8); activations stay in --dtype. Default: the "
                        "checkpoint's own form (docs/quantization.md)")
    g.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=False,
                   help="run every step on the eager model: no fused one-sequence decode step (bastion's "
                        "C++ decode step on CPU; vLLM's flag, which turns off CUDA graphs and compilation)")
    g.add_argument("--huge-pages", action=argparse.BooleanOptionalAction, default=True,
                   help="on CPU, put the weights and the KV pool in 2 MiB pages (transparent huge "
                        "pages, Linux 6.1+): a decode step streams every weight, and 4 KiB pages cost "
                        "one TLB miss each; nothing happens where the system's THP setting is never")
    g.add_argument("--attention-backend", type=_backend, choices=ATTENTION_BACKENDS, default="auto",
                   help="auto: cpu-paged on a CPU where bastion's kernels take the model (decodes attend "
                        "in place over the paged KV cache, one C++ call per step), else torch-sdpa "
                        "(torch's scaled_dot_product_attention over gathered blocks; CUDA, and the "
                        "reference); vLLM's flag (TORCH_SDPA is torch-sdpa)")
    g.add_argument("--tensor-parallel-size", "-tp", "--tp", "--tp-size", type=int, default=1, metavar="N",
                   help="split the model over N worker processes per engine rank (tensor "
                        "parallelism, gloo on loopback on CPU, NCCL on CUDA; docs/parallelism.md); each "
                        "worker gets its share of the rank's cores (--num-threads / N)")
    g.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N")
    g.add_argument("--max-model-len", "--context-length", type=int, default=None,
                   help="context length (prompt + output); default: the model's")
    g.add_argument("--block-size", "--page-size", type=int, default=16, help="tokens per KV-cache block")
    g.add_argument("--kv-cache-memory", type=parse_bytes, default=None,
                   help="size of the KV pool, e.g. 4GiB or 512MB (default: enough for "
                        "--max-num-seqs full sequences, at most 4GiB on CPU; 85%% of free memory on CUDA)")
    g.add_argument("--num-kv-blocks", type=int, default=None,
                   help="size of the KV pool in blocks (instead of --kv-cache-memory)")
    g.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction, default=True,
                   help="reuse the KV of shared prompt prefixes (--disable-radix-cache: alias of "
                        "--no-enable-prefix-caching)")
    g.add_argument("--disable-radix-cache", dest="enable_prefix_caching", action="store_false",
                   help=argparse.SUPPRESS)  # NOTE: SGLang's name; noted in the help above
    g.add_argument("--max-num-batched-tokens", type=int, default=2048,
                   help="token budget of one engine step (prefill chunks + decodes)")
    g.add_argument("--max-num-seqs", "--max-running-requests", type=int, default=128,
                   help="most sequences running at once")
    g.add_argument("--seed", "--random-seed", type=int, default=0, help="seed of the engine's random state")
    g.add_argument("--num-threads", type=int, default=None,
                   help="CPU threads for torch (default: every core this process may use)")
    s = parser.add_argument_group("structured outputs (JSON schema, regex, choice, grammar, tool calls)")
    s.add_argument("--structured-output-compile-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="time one grammar may take to compile; a request whose grammar takes longer "
                        "gets a 400 (checked in the API server before admission, in a check worker "
                        "process that is killed at the bound)")
    s.add_argument("--structured-output-max-bytes", type=parse_bytes, default=256 * 2**10, metavar="SIZE",
                   help="largest schema, regex, grammar or list of choices a request may give "
                        "(default 256KiB); larger ones get a 400")
    s.add_argument("--grammar-backend", "--structured-outputs-config.backend", "--guided-decoding-backend",
                   dest="grammar_backend", choices=GRAMMAR_BACKENDS, default="llguidance",
                   help="accepted for SGLang's and vLLM's command lines: bastion compiles and enforces "
                        "every constraint with llguidance, whichever is named (a warning says so)")
    s.add_argument("--structured-output-cache-size", type=int, default=256, metavar="N",
                   help="compiled grammars each engine keeps, and grammar check verdicts each API "
                        "server keeps, by constraint text (0: none)")
    s.add_argument("--structured-output-max-waiting-compiles", type=int, default=64, metavar="N",
                   help="grammar compiles that may wait for one API server's check workers at once, "
                        "all callers together; past it a constrained request gets 503 with "
                        "Retry-After (a cached verdict or a compile of the same constraint already "
                        "under way takes no place; default 64)")
    s.add_argument("--structured-output-max-waiting-compiles-per-principal", type=int, default=16,
                   metavar="N",
                   help="grammar compiles one caller (API key, JWT subject) may have waiting for "
                        "one API server's check workers at once; past it 429 with Retry-After "
                        "(default 16)")
    s.add_argument("--structured-output-strict-properties", action=argparse.BooleanOptionalAction,
                   default=True,
                   help="a JSON schema's objects get only the properties the schema names, unless it "
                        "allows others explicitly (additionalProperties true or a schema, "
                        "patternProperties), as xgrammar, vLLM's and SGLang's default backend, does; "
                        "--no-structured-output-strict-properties follows the JSON Schema letter (an "
                        "unset additionalProperties allows any other property, so a model may add "
                        "properties until max_tokens). vLLM's spelling: "
                        "--structured-outputs-config.disable_additional_properties true|false")
    s.add_argument("--structured-outputs-config.disable_additional_properties",
                   dest="structured_output_strict_properties", type=_on_off, nargs="?", const=True,
                   metavar="true|false", help=argparse.SUPPRESS)  # NOTE: vLLM's name; in the help above


ENGINE_FLAGS = ("dtype", "quantization", "enforce_eager", "huge_pages", "attention_backend", "tensor_parallel_size", "device", "max_model_len", "block_size",
                "kv_cache_memory", "num_kv_blocks",
                "enable_prefix_caching", "max_num_batched_tokens", "max_num_seqs", "seed",
                "num_threads", "structured_output_compile_timeout", "structured_output_max_bytes",
                "structured_output_cache_size", "structured_output_max_waiting_compiles",
                "structured_output_max_waiting_compiles_per_principal", "structured_output_strict_properties")


def engine_kwargs(args: argparse.Namespace) -> dict:
    """The parsed engine flags as keyword arguments for `LLM(...)` / `EngineConfig.from_kwargs`."""
    return {name: getattr(args, name) for name in ENGINE_FLAGS}


def engine_config(model: str, args: argparse.Namespace) -> EngineConfig:
    backend = getattr(args, "grammar_backend", "llguidance")
    if backend not in ("llguidance", "auto", "guidance"):
        logger.warning("--grammar-backend %s: bastion enforces structured outputs with llguidance", backend)
    return EngineConfig.from_kwargs(model, **engine_kwargs(args))
