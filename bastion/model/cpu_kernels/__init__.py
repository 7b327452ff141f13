"""bastion's own CPU kernels, a small C++ extension built on first use (see build.py).

`linear`: y = x W^T for a few rows of x (decode batches), streaming bfloat16 weights with
AVX512-BF16 dot products near memory speed where oneDNN's small-M GEMM is not.
`make_decoder`: one whole decode step of one sequence in one call (engine.md, "Kernels").
"""
from bastion.model.cpu_kernels.build import KernelsUnavailable, load_kernels

__all__ = ["KernelsUnavailable", "load_kernels"]
