"""Paged attention: the step's context and the backend interface (context.py), torch's SDPA
backend (sdpa.py, CPU and CUDA) and the in-place CPU backend on bastion's kernels (cpu.py)."""
from bastion.model.attention.context import (AttentionBackend, AttentionContext, DecodeGroup, PrefillChunk,
                                             attention_context, current_context, get_context)
from bastion.model.attention.sdpa import SdpaPagedBackend

__all__ = ["AttentionBackend", "AttentionContext", "DecodeGroup", "PrefillChunk", "SdpaPagedBackend",
           "attention_context", "current_context", "get_context"]
