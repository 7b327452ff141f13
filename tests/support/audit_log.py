"""Reading a server's audit log in tests: a line is written as its response ends, so a test that
has just had its answer waits (bounded) for the line instead of reading at once."""
from __future__ import annotations

import json
import time
from pathlib import Path


def audit_lines(path: Path, predicate=lambda lines: True, timeout: float = 20.0) -> list[dict]:
    """The log's lines once `predicate` holds of them, or as they are after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if predicate(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)
