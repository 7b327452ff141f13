"""Open a GGUF file and read its metadata, turning the parser's many failures into ModelLoadError."""
from __future__ import annotations

import functools
import re
from pathlib import Path

from bastion.model.arch_config import ModelLoadError

MAGIC = b"GGUF"


def is_gguf(path: str | Path) -> bool:
    """A file named *.gguf, or any file starting with GGUF's magic bytes."""
    path = Path(path)
    if not path.is_file():
        return False
    if path.suffix.lower() == ".gguf":
        return True
    with open(path, "rb") as f:
        return f.read(4) == MAGIC


def open_gguf(path: str | Path):
    """A `gguf.GGUFReader` over `path` (memory-mapped; no tensor data is read yet).

    The last file opened is kept for the process (keyed by its size and modification time):
    parsing the metadata of a 49k-token vocabulary takes seconds, and an engine reads it for
    its ArchConfig and again for its weights."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != MAGIC:
        raise ModelLoadError(f"{path}: not a GGUF file (it starts with {magic!r}, not {MAGIC!r})")
    stat = path.stat()
    return _open(path.resolve(), stat.st_size, stat.st_mtime_ns, path)


@functools.lru_cache(maxsize=1)
def _open(real: Path, size: int, mtime_ns: int, path: Path):
    from gguf import GGUFReader

    try:
        return GGUFReader(real, "r")
    except ValueError as exc:
        unknown = re.search(r"(\d+)\)? is not a valid GGMLQuantizationType", str(exc))
        if unknown:
            raise ModelLoadError(f"{path}: a tensor has type id {unknown.group(1)}, which this gguf "
                                 "package does not know (a newer llama.cpp type?); "
                                 "see docs/gguf.md for the types bastion reads") from None
        raise ModelLoadError(f"{path}: not a readable GGUF file, truncated or corrupt ({exc})") from None
    except Exception as exc:  # NOTE: the parser raises struct, index, key and memmap errors alike
        raise ModelLoadError(f"{path}: not a readable GGUF file, truncated or corrupt "
                             f"({type(exc).__name__}: {exc})") from None


def field(reader, key: str, default=None):
    """The value of metadata `key` (a number, string or list), or `default` when absent."""
    found = reader.fields.get(key)
    if found is None:
        return default
    return found.contents()


def require(reader, key: str, path: Path):
    """The value of metadata `key`; ModelLoadError naming the key when the file lacks it."""
    value = field(reader, key)
    if value is None:
        raise ModelLoadError(f"{path}: GGUF metadata {key!r} is missing")
    return value
