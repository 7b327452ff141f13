"""What a benchmark ran on, for its JSON: CPU model, cores, the instruction-set flags that
matter to the model and to TLS/CurveZMQ, and the software versions."""
from __future__ import annotations

import os
import platform

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
