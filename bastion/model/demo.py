"""The tiny demo Llama model that ships inside the bastion package.

``demo_files/`` holds a ~4M-parameter ``LlamaForCausalLM`` (bfloat16 safetensors,
grouped-query attention) and its byte-level BPE tokenizer, trained on CPU from
Python's own documentation by ``scripts/train_demo_model.py``. It lets bastion
run, serve and be tested with no download.
"""

from __future__ import annotations

import shutil
from pathlib import Path

DEMO_MODEL_DIR: Path = Path(__file__).parent / "demo_files"


def default_model_path() -> Path:
    """Return the folder of the packaged demo model."""
    return DEMO_MODEL_DIR


def write_demo_model(out_dir: str | Path, overwrite: bool = False) -> Path:
    """Copy the demo model's files into ``out_dir`` (created if needed) and return it.

    Raises ``FileExistsError`` if ``out_dir`` already holds a ``config.json``,
    unless ``overwrite`` is true; ``FileNotFoundError`` if the packaged files
    are missing.
    """
    out = Path(out_dir)
    if (out / "config.json").exists() and not overwrite:
        raise FileExistsError(
            f"{out} already contains a model (config.json); "
            "use --force (overwrite=True) to replace it"
        )
    files = sorted(p for p in DEMO_MODEL_DIR.glob("*") if p.is_file())
    if not any(p.name == "config.json" for p in files):
        raise FileNotFoundError(f"demo model files are missing from {DEMO_MODEL_DIR}")
    out.mkdir(parents=True, exist_ok=True)
    for src in files:
        shutil.copy2(src, out / src.name)
    return out
