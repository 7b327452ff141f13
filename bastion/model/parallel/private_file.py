"""Files that the processes of one rank share (the shared-memory collectives, the workers' KV
caches under disaggregated serving), in the rank's private 0700 directory, opened so that
nothing planted at a path is ever used: the maker creates the file exclusively and never through
a symbolic link (O_CREAT | O_EXCL | O_NOFOLLOW, mode 0600), so a file or link already there is
refused; the others open it without following a symbolic link (O_NOFOLLOW) and check that it is
a regular file of this user, of the size they expect.
"""
from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path


def map_private(path: Path, size: int, create: bool) -> mmap.mmap:
    """A shared read-write mapping of the `size`-byte file at `path`: made zeroed and 0600 with
    `create` (FileExistsError if anything is at the path); else opened as it is (OSError ELOOP
    for a symbolic link, RuntimeError naming the path for anything but our own regular file of
    `size` bytes)."""
    fd = _open(path, size, create)
    try:
        return mmap.mmap(fd, size)
    finally:
        os.close(fd)


def _open(path: Path, size: int, create: bool) -> int:
    if create:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.fchmod(fd, 0o600)  # NOTE: whatever the umask left
            os.ftruncate(fd, size)
        except BaseException:
            os.close(fd)
            raise
        return fd
    fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
    info = os.fstat(fd)
    why = ("is not a regular file" if not stat.S_ISREG(info.st_mode)
           else "belongs to another user" if info.st_uid != os.getuid()
           else f"{info.st_size} bytes, expected {size}" if info.st_size != size else "")
    if why:
        os.close(fd)
        raise RuntimeError(f"{path}: {why}")
    return fd
