#!/usr/bin/env python3
"""Train bastion's tiny demo Llama model and tokenizer from scratch on CPU.

The corpus is built only from text that ships with CPython itself (the
``pydoc_data`` help topics plus stdlib docstrings), so no download is needed.
The script trains a byte-level BPE tokenizer with Llama-3 style special
tokens, then a 4-layer ``LlamaForCausalLM`` with grouped-query attention for a
fixed wall-clock budget, and writes a Hugging Face style model folder
(``config.json``, ``generation_config.json``, ``model.safetensors`` in
bfloat16, ``tokenizer.json``, ``tokenizer_config.json``,
``special_tokens_map.json``).

Usage::

    python scripts/train_demo_model.py [--out DIR] [--minutes M] [--steps N] [--seed S]

Seeds are fixed; with ``--minutes 0 --steps N`` the run is step-bounded and
therefore reproducible on the same machine and library versions. (With a
wall-clock budget the number of steps depends on the machine's speed.) On a
CPU shared with other busy processes, ``--threads 1`` is much faster than 2.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import math
import random
import time
import warnings
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "bastion" / "model" / "demo_files"

BOS, EOS, START_HEADER, END_HEADER, EOT, PAD = (
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
    "<|end_header_id|>", "<|eot_id|>", "<|pad|>",
)
SPECIAL_TOKENS = [BOS, EOS, START_HEADER, END_HEADER, EOT, PAD]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)

# Side-effect-free stdlib modules whose docstrings form the corpus (kept sorted).
STDLIB_MODULES = sorted([
    "abc", "argparse", "array", "ast", "asyncio", "atexit", "base64", "bdb", "binascii",
    "bisect", "builtins", "bz2", "calendar", "cmath", "cmd", "code", "codecs", "codeop",
    "collections", "collections.abc", "colorsys", "compileall", "concurrent.futures",
    "concurrent.futures.process", "concurrent.futures.thread", "configparser",
    "contextlib", "contextvars", "copy", "copyreg", "csv", "ctypes", "ctypes.util",
    "dataclasses", "datetime", "decimal", "difflib", "dis", "doctest", "email",
    "email.charset", "email.feedparser", "email.generator", "email.header",
    "email.headerregistry", "email.message", "email.parser", "email.policy",
    "email.utils", "enum", "errno", "faulthandler", "fcntl", "filecmp", "fileinput",
    "fnmatch", "fractions", "ftplib", "functools", "gc", "getopt", "getpass", "gettext",
    "glob", "graphlib", "grp", "gzip", "hashlib", "heapq", "hmac", "html",
    "html.parser", "http", "http.client", "http.cookiejar", "http.cookies",
    "http.server", "imaplib", "importlib", "importlib.abc", "importlib.machinery",
    "importlib.metadata", "importlib.resources", "importlib.util", "inspect", "io",
    "ipaddress", "itertools", "json", "json.decoder", "json.encoder", "keyword",
    "linecache", "locale", "logging", "logging.config", "logging.handlers", "lzma",
    "mailbox", "marshal", "math", "mimetypes", "mmap", "modulefinder",
    "multiprocessing", "multiprocessing.connection", "multiprocessing.managers",
    "multiprocessing.pool", "multiprocessing.shared_memory", "netrc", "ntpath",
    "numbers", "opcode", "operator", "optparse", "os", "os.path", "pathlib", "pdb",
    "pickle", "pickletools", "pkgutil", "platform", "plistlib", "poplib", "posix",
    "posixpath", "pprint", "profile", "pstats", "pty", "pwd", "py_compile", "pyclbr",
    "pydoc", "queue", "quopri", "random", "re", "reprlib", "resource", "rlcompleter",
    "runpy", "sched", "secrets", "select", "selectors", "shelve", "shlex", "shutil",
    "signal", "smtplib", "socket", "socketserver", "sqlite3", "sqlite3.dbapi2", "ssl",
    "stat", "statistics", "string", "stringprep", "struct", "subprocess", "symtable",
    "sys", "sysconfig", "syslog", "tabnanny", "tarfile", "tempfile", "termios",
    "textwrap", "threading", "time", "timeit", "token", "tokenize", "tomllib", "trace",
    "traceback", "tracemalloc", "tty", "types", "typing", "unicodedata", "unittest",
    "unittest.mock", "urllib.error", "urllib.parse", "urllib.request",
    "urllib.robotparser", "uuid", "warnings", "wave", "weakref", "wsgiref.handlers",
    "wsgiref.headers", "wsgiref.simple_server", "wsgiref.util", "wsgiref.validate",
    "xml.dom.minidom", "xml.dom.pulldom", "xml.etree.ElementTree", "xml.sax",
    "xml.sax.handler", "xml.sax.saxutils", "xml.sax.xmlreader", "xmlrpc.client",
    "xmlrpc.server", "zipapp", "zipfile", "zipimport", "zlib", "zoneinfo",
])

MIN_DOC_CHARS = 40
CHUNK_CHARS = 1000


def parse_args() -> argparse.Namespace:
    """Parse the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder")
    p.add_argument("--minutes", type=float, default=7.0,
                   help="wall-clock training budget in minutes (0 = no limit)")
    p.add_argument("--steps", type=int, default=100_000, help="maximum optimizer steps")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--lr", type=float, default=1.5e-3, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=30, help="linear warmup steps")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    return p.parse_args()


# ----------------------------------------------------------------------------- corpus


def _member_docs(obj: object) -> list[str | None]:
    """Raw docstrings of a public function or class (and the class's public members)."""
    docs: list[str | None] = [getattr(obj, "__doc__", None)]
    if inspect.isclass(obj):
        for name, member in sorted(vars(obj).items()):
            if name.startswith("_"):
                continue
            if isinstance(member, (staticmethod, classmethod)):
                member = member.__func__
            if inspect.isroutine(member) or isinstance(member, property):
                docs.append(member.__doc__)
    return docs


def module_docstrings(module_name: str) -> list[str]:
    """Cleaned docstrings of a module and its public classes and functions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # deprecated modules and attributes
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            return []
        raw: list[str | None] = [module.__doc__]
        for name in sorted(dir(module)):
            obj = None if name.startswith("_") else getattr(module, name, None)
            if inspect.isclass(obj) or inspect.isroutine(obj):
                raw.extend(_member_docs(obj))
    return [inspect.cleandoc(d) for d in raw if isinstance(d, str)]


def chunk_text(text: str, limit: int = CHUNK_CHARS) -> list[str]:
    """Split text on blank lines into chunks of roughly ``limit`` characters."""
    chunks: list[str] = []
    current = ""
    for para in text.split("\n\n"):
        if current and len(current) + len(para) + 2 > limit:
            chunks.append(current)
            current = para
        else:
            current = f"{current}\n\n{para}" if current else para
    if current:
        chunks.append(current)
    return [c.strip() for c in chunks if c.strip()]


def build_corpus() -> list[str]:
    """Documents from pydoc help topics and stdlib docstrings, deduplicated, in fixed order."""
    from pydoc_data.topics import topics

    texts = [topics[key] for key in sorted(topics)]
    for name in STDLIB_MODULES:
        texts.extend(module_docstrings(name))
    seen: set[str] = set()
    docs: list[str] = []
    for text in texts:
        text = text.strip()
        if len(text) < MIN_DOC_CHARS or text in seen:
            continue
        seen.add(text)
        docs.extend(chunk_text(text))
    return docs


# -------------------------------------------------------------------------- tokenizer


def train_tokenizer(docs: list[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE tokenizer whose post-processor prepends BOS."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=2, special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(docs, trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS}:1 $B:1", special_tokens=[(BOS, bos_id)],
    )
    return tok


def save_tokenizer(tok: Tokenizer, out: Path, max_len: int) -> None:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
    tok.save(str(out / "tokenizer.json"))
    added = {
        str(tok.token_to_id(t)): {"content": t, "lstrip": False, "normalized": False,
                                  "rstrip": False, "single_word": False, "special": True}
        for t in SPECIAL_TOKENS
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast", "added_tokens_decoder": added,
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD,
        "model_max_length": max_len, "clean_up_tokenization_spaces": False,
        "model_input_names": ["input_ids", "attention_mask"], "chat_template": CHAT_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    special = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def check_tokenizer(out: Path) -> None:
    """Load the saved tokenizer with transformers and render a chat prompt."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    hf = AutoTokenizer.from_pretrained(out)
    assert isinstance(hf, PreTrainedTokenizerFast), type(hf)
    assert hf.bos_token == BOS and hf.eos_token == EOS and hf.pad_token == PAD
    prompt = hf.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)
    assert prompt.startswith(BOS) and prompt.endswith("assistant<|end_header_id|>\n\n")
    assert hf("hello").input_ids[0] == hf.bos_token_id
    print(f"tokenizer: {type(hf).__name__}, vocab {len(hf)}, chat prompt {prompt!r}")


def encode_corpus(tok: Tokenizer, docs: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token stream ``BOS doc EOS BOS doc EOS ...`` and the offsets where documents start."""
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    stream: list[int] = []
    starts: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        starts.append(len(stream))
        stream.extend([bos, *enc.ids, eos])
    return torch.tensor(stream, dtype=torch.long), torch.tensor(starts, dtype=torch.long)


# ------------------------------------------------------------------------------ model


def build_model(tok: Tokenizer, seq_len_max: int = 2048):
    """A fresh float32 LlamaForCausalLM (256 wide, 4 layers, GQA 4 q / 2 kv heads)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=256, intermediate_size=688,
        num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=64, max_position_embeddings=seq_len_max, rope_theta=10000.0,
        rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu",
        initializer_range=0.02, bos_token_id=tok.token_to_id(BOS),
        eos_token_id=tok.token_to_id(EOS), pad_token_id=tok.token_to_id(PAD),
    )
    return LlamaForCausalLM(config).float()


def get_batch(stream: torch.Tensor, starts: torch.Tensor, batch: int, seq_len: int,
              gen: torch.Generator) -> torch.Tensor:
    """Windows of ``seq_len`` tokens, each beginning at a document's BOS."""
    valid = starts[starts + seq_len <= len(stream)]
    picks = valid[torch.randint(len(valid), (batch,), generator=gen)]
    return torch.stack([stream[s:s + seq_len] for s in picks.tolist()])


def lr_at(step: int, progress: float, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay to 10% of the peak as ``progress`` goes 0 -> 1."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    return args.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(progress, 1.0))))


def train(model, stream: torch.Tensor, starts: torch.Tensor,
          args: argparse.Namespace) -> tuple[int, float, float]:
    """Train until the step cap or wall budget; returns (steps, final loss, seconds)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(args.seed)
    budget = args.minutes * 60 if args.minutes > 0 else float("inf")
    t0, step, ema = time.time(), 0, None
    model.train()
    while step < args.steps and time.time() - t0 < budget:
        progress = max(step / args.steps, (time.time() - t0) / budget)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, progress, args)
        x = get_batch(stream, starts, args.batch_size, args.seq_len, gen)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if step % args.log_every == 0 or step == 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  ema {ema:.3f}  "
                  f"lr {opt.param_groups[0]['lr']:.2e}  {time.time() - t0:6.1f}s", flush=True)
    return step, ema or float("nan"), time.time() - t0


def save_model(model, out: Path, eot_id: int) -> None:
    """Save bfloat16 weights as one model.safetensors plus config/generation config."""
    model = model.to(torch.bfloat16)
    model.generation_config.bos_token_id = model.config.bos_token_id
    # End of text, and the end of a chat turn: chat replies stop at <|eot_id|> as with Llama 3.
    model.generation_config.eos_token_id = [model.config.eos_token_id, eot_id]
    model.generation_config.pad_token_id = model.config.pad_token_id
    model.save_pretrained(out, safe_serialization=True, max_shard_size="1GB")
    (out / "model.safetensors").chmod(0o644)  # save_pretrained may create it 0600
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    # Keep the classic keys too, for readers that predate transformers 5.
    cfg["torch_dtype"] = "bfloat16"
    cfg["rope_theta"] = float(model.config.rope_parameters["rope_theta"])
    cfg["architectures"] = ["LlamaForCausalLM"]
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def sample(out: Path, prompt: str = "The function returns") -> None:
    """Reload the saved folder and print a greedy and a sampled continuation."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(out)
    model = LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    ids = tok(prompt, return_tensors="pt").input_ids
    torch.manual_seed(0)
    for kwargs in ({"do_sample": False}, {"do_sample": True, "temperature": 0.8, "top_k": 50}):
        with torch.no_grad():
            gen = model.generate(ids, max_new_tokens=48, **kwargs)
        print(f"{kwargs}: {tok.decode(gen[0], skip_special_tokens=True)!r}")


def main() -> None:
    """Build corpus, tokenizer and model, train, save and sample."""
    args = parse_args()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    docs = build_corpus()
    print(f"corpus: {len(docs)} documents, {sum(map(len, docs)) / 1e6:.2f} MB of text")
    tok = train_tokenizer(docs, args.vocab_size)
    save_tokenizer(tok, args.out, max_len=2048)
    check_tokenizer(args.out)
    stream, starts = encode_corpus(tok, docs)
    print(f"tokens: {len(stream)} ({sum(map(len, docs)) / len(stream):.2f} chars/token)")

    model = build_model(tok)
    print(f"model: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    steps, loss, secs = train(model, stream, starts, args)
    print(f"trained {steps} steps in {secs:.0f}s, final loss (ema) {loss:.3f}")
    save_model(model, args.out, tok.token_to_id(EOT))
    for path in sorted(args.out.iterdir()):
        print(f"  {path.name:28s} {path.stat().st_size:>10,d} bytes")
    sample(args.out)


if __name__ == "__main__":
    main()
