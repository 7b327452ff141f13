"""bastion: a fast, scaled-out, secure-by-default LLM server for Llama-family models."""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "__version__"]


def __getattr__(name: str):
    # NOTE: lazy, so that `import bastion` (e.g. for the CLI's --help) does not import torch.
    if name == "LLM":
        from bastion.engine.llm import LLM
        return LLM
    if name == "SamplingParams":
        from bastion.sampling_params import SamplingParams
        return SamplingParams
    raise AttributeError(name)
