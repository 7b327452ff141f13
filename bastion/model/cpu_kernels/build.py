"""Build (once per machine and version) and load the C++ CPU kernels.

The sources in csrc/ are compiled with torch's extension builder for the CPU they run on
(`-march=native`, so the AVX512-BF16 path is used where the CPU has it) into a cache folder
keyed by the sources, the CPU's flags and the torch and Python versions. The first start on a
machine compiles (about half a minute); later starts import the cached library. Without a C++
compiler the kernels are unavailable and the model runs on torch's own kernels (logged once).
A cache folder or library that another user owns or may write is never loaded.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import importlib.util
import logging
import os
import platform
import shutil
import stat
import sys
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

SOURCES = ("bindings.cpp", "linear.cpp", "decode_step.cpp", "paged_attention.cpp", "elementwise.cpp")
HEADERS = ("dot.h", "blocked.h", "decode_step.h", "linear.h", "paged_attention.h", "paged_attention_bf16.h", "elementwise.h")
CACHE_ENV = "BASTION_KERNEL_CACHE"


class KernelsUnavailable(RuntimeError):
    """The extension could not be built or loaded here (the message says why)."""


def cache_root() -> Path:
    """Where built kernels are kept: $BASTION_KERNEL_CACHE, else ~/.cache/bastion/kernels."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bastion" / "kernels"


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def _build_key(src: Path) -> str:
    digest = hashlib.sha256()
    for name in SOURCES + HEADERS:
        digest.update((src / name).read_bytes())
    digest.update(f"{_cpu_flags()}|{torch.__version__}|{sys.version_info[:2]}".encode())
    return digest.hexdigest()[:16]


def _check_trusted(path: Path) -> None:
    """Refuse to load code from a path another user owns or may write (a planted library)."""
    info = path.stat()
    if info.st_uid != os.getuid() or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise KernelsUnavailable(f"{path} belongs to another user or is writable by others: "
                                 "not loading bastion's CPU kernels from it")


def _import_built(name: str, folder: Path) -> ModuleType | None:
    library = folder / f"{name}.so"
    if not library.is_file():
        return None
    for path in (folder.parent, folder, library):
        _check_trusted(path)
    spec = importlib.util.spec_from_file_location(name, library)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(name: str, src: Path, folder: Path) -> ModuleType:
    from torch.utils import cpp_extension

    stale = folder / "lock"  # torch's own build lock, left behind by a build that was killed
    stale.unlink(missing_ok=True)
    logger.info("building bastion's CPU kernels into %s (once per machine; about half a minute)", folder)
    if shutil.which("ninja") is None:
        try:
            import ninja  # the PyPI package: its binary for torch's builder when no ninja is on PATH
            os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"
        except ImportError:
            pass
    return cpp_extension.load(
        name, [str(src / s) for s in SOURCES], build_directory=str(folder),
        extra_cflags=["-O3", "-march=native", "-fopenmp"], extra_ldflags=["-fopenmp"], verbose=False)


def load_kernels() -> ModuleType:
    """The kernels module, built first if this machine has no cached build; raises
    `KernelsUnavailable` (and keeps raising it in this process) when that fails."""
    outcome = _load_once()
    if isinstance(outcome, KernelsUnavailable):
        raise outcome
    return outcome


@functools.lru_cache(maxsize=1)
def _load_once() -> ModuleType | KernelsUnavailable:
    try:
        return _load()
    except KernelsUnavailable as exc:
        return exc


def _load() -> ModuleType:
    if platform.machine() not in ("x86_64", "AMD64"):
        raise KernelsUnavailable(f"no CPU kernels for {platform.machine()} (x86-64 only)")
    src = Path(__file__).with_name("csrc")
    name = f"bastion_cpu_kernels_{_build_key(src)}"
    folder = cache_root() / name
    try:
        module = _import_built(name, folder)
        if module is not None:
            return module
        folder.parent.mkdir(parents=True, exist_ok=True)
        folder.mkdir(mode=0o700, exist_ok=True)
        _check_trusted(folder.parent)
        _check_trusted(folder)
        with open(folder / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # NOTE: released by the kernel if this process dies
            return _import_built(name, folder) or _compile(name, src, folder)
    except KernelsUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - any build failure means: use torch's kernels
        detail = " ".join(str(exc).split())[-600:]  # the end of a compiler's output says why
        raise KernelsUnavailable(f"bastion's CPU kernels could not be built ({detail})") from exc


def kernels_or_none() -> ModuleType | None:
    """`load_kernels()`, or None with the reason logged once."""
    try:
        return load_kernels()
    except KernelsUnavailable as exc:
        _log_once(str(exc))
        return None


@functools.lru_cache(maxsize=None)
def _log_once(message: str) -> None:
    logger.warning("%s; using torch's kernels", message)
