"""A child's log tail read while its stderr reader thread appends to it."""
from __future__ import annotations

import collections
import sys
import threading

from bastion.launch.procs import LOG_TAIL_LINES, Child


def test_the_tail_reads_whole_while_the_reader_appends():
    """The supervisor reads a rank's last lines while the rank still logs: that read must not
    raise "deque mutated during iteration" (it ended the supervisor's tick loop once)."""
    child = Child.__new__(Child)  # NOTE: only the tail and its reader thread, no process
    child.tail = collections.deque((f"old {i}" for i in range(LOG_TAIL_LINES)), maxlen=LOG_TAIL_LINES)
    child._stderr = threading.Thread(target=lambda: None)
    child._stderr.start()
    stop = threading.Event()

    def reader() -> None:
        i = 0
        while not stop.is_set():
            child.tail.append(f"line {i}")
            i += 1

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # thread switches as often as they can come
    appender = threading.Thread(target=reader)
    appender.start()
    try:
        for _ in range(300):
            assert child.last_lines(wait=False).count("\n") == LOG_TAIL_LINES - 1
            assert child.last_line().startswith(("line", "old"))
    finally:
        stop.set()
        appender.join()
        sys.setswitchinterval(interval)
