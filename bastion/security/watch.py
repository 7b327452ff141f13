"""Polls files for changes (following symlinks, so Kubernetes-style `..data` swaps are seen)."""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable

logger = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0


def signature(paths: list[str]) -> tuple:
    """What identifies the current content of `paths`: target path, inode, mtime and size."""
    marks = []
    for path in paths:
        try:
            st = os.stat(path)
            marks.append((os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            marks.append((path, None))
    return tuple(marks)


class FileWatch:
    """Calls `on_change()` in a daemon thread whenever any of `paths` changes."""

    def __init__(self, paths: list[str], on_change: Callable[[], None], name: str,
                 interval: float = POLL_INTERVAL_S) -> None:
        self.paths, self.on_change, self.interval = paths, on_change, interval
        self._seen = signature(paths)
        self._stop = threading.Event()
        threading.Thread(target=self._loop, name=name, daemon=True).start()

    def poll(self) -> bool:
        """Run `on_change` now if anything changed since the last poll."""
        seen = signature(self.paths)
        if seen == self._seen:
            return False
        self._seen = seen
        self.on_change()
        return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:
                logger.exception("file watch %s failed", self.paths)

    def stop(self) -> None:
        self._stop.set()
