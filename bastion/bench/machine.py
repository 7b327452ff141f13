"""What a benchmark ran on, for its JSON: CPU model, cores, the instruction-set flags that
matter to the model and to TLS/CurveZMQ, the software versions, and (`memory_bandwidth`) how
fast it moves memory, measured there and then."""
from __future__ import annotations

import os
import platform
import time

# NOTE: vector units (the model's matmuls) and crypto instructions (TLS's AES-GCM, SHA)
NOTABLE_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16",
                 "aes", "vaes", "pclmulqdq", "vpclmulqdq", "sha_ni")


def machine_summary() -> dict:
    """CPU model, logical cores, usable cores, notable CPU flags; Python and torch versions."""
    model, flags = _cpuinfo()
    import torch

    return {"cpu": model or platform.processor() or platform.machine(),
            "logical_cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "cpu_flags": [f for f in NOTABLE_FLAGS if f in flags],
            "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip() == "model name" and not model:
            model = value.strip()
        elif name.strip() in ("flags", "Features") and not flags:
            flags = set(value.split())
    return model, flags


def memory_bandwidth(mib: int = 256, repeats: int = 8, seconds: float = 5.0) -> dict:
    """GB/s this machine moves now, best of at most `repeats` passes over `mib` MiB (larger than
    any cache), `seconds` at most per test: `copy` (numpy, one thread; read + write, counted
    twice, as STREAM's copy), `read` (a torch sum, torch's threads; what a decode step does
    to the weights), and `gb_s`, the larger of the two: the bandwidth limit to hold speeds to."""
    import numpy as np
    import torch

    src = np.ones(mib * 2**20 // 8)
    dst = np.empty_like(src)
    copy = _best(lambda: np.copyto(dst, src), 2 * src.nbytes, repeats, seconds)
    del dst
    weights = torch.from_numpy(src)
    read = _best(lambda: weights.sum(), weights.nbytes, repeats, seconds)
    return {"gb_s": max(copy, read), "copy_gb_s": copy, "read_gb_s": read, "mib": mib,
            "torch_threads": torch.get_num_threads()}


def _best(step, nbytes: int, repeats: int, seconds: float) -> float:
    best, deadline = float("inf"), time.perf_counter() + seconds
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
        if time.perf_counter() > deadline:
            break
    return round(nbytes / best / 1e9, 1)
