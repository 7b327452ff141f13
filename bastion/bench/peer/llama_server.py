"""llama.cpp's `llama-server`, started by a bench the way its own users start it.

`-np` (slots, one per concurrent stream) equal to the concurrency measured and `-c` = `-np` x
the context one stream needs (llama.cpp's advice: one server sized for 64 streams is slower at
1 or 16 than one sized for them), `-t`/`-tb` the same threads bastion gets, continuous batching
on, no web UI, on loopback at port 0 (it binds and prints the real port). Its `--version` and
full command line go into the bench's JSON.
"""
from __future__ import annotations

import collections
import re
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import httpx

from bastion.bench.harness import BenchServer
from bastion.launch.procs import terminate

LISTENING = re.compile(r"listening on (https?://\S+)")
START_TIMEOUT = 300.0
CONTEXT_STEP = 256  # a slot's context is rounded up to this


def slot_context(longest_request: int) -> int:
    """The context one slot needs for requests of at most `longest_request` tokens (prompt and
    output), rounded up."""
    return max(CONTEXT_STEP, -(-longest_request // CONTEXT_STEP) * CONTEXT_STEP)


def llama_server_command(binary: str, gguf: str, concurrency: int, context_per_slot: int, threads: int,
                         extra: Sequence[str] = ()) -> list[str]:
    """The command line: `-np concurrency -c concurrency x context_per_slot -t/-tb threads`."""
    return [binary, "-m", gguf, "--host", "127.0.0.1", "--port", "0", "-t", str(threads), "-tb", str(threads),
            "-np", str(concurrency), "-c", str(concurrency * context_per_slot), "-cb", "--no-webui", *extra]


def llama_server_version(binary: str) -> str:
    """What `llama-server --version` prints (its version and the commit it was built from)."""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unknown ({type(exc).__name__}: {exc})"
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return "; ".join(line for line in lines if "version" in line or "built with" in line) or "; ".join(lines[-2:])


def check_peer_files(binary: str, gguf: str | None) -> None:
    """ValueError naming the flag when the binary or the model file is missing."""
    if not Path(binary).is_file():
        raise ValueError(f"--peer-llama-server {binary}: no such file (build it with ../shared/anchors/llama_cpp.sh)")
    if not gguf:
        raise ValueError("--peer-llama-server needs --peer-model GGUF: the same checkpoint as a GGUF file")
    if not Path(gguf).is_file():
        raise ValueError(f"--peer-model {gguf}: no such file")


@contextmanager
def started_llama_server(command: list[str], timeout: float = START_TIMEOUT) -> Iterator[BenchServer]:
    """Run `command`, wait until it listens and its /health answers 200, yield it; stop it after."""
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    tail: collections.deque[str] = collections.deque(maxlen=30)
    found: list[str] = []
    listening = threading.Event()

    def read() -> None:
        for line in proc.stderr:
            tail.append(line.rstrip())
            if not found and (match := LISTENING.search(line)):
                found.append(match.group(1))
                listening.set()
        listening.set()
    threading.Thread(target=read, daemon=True).start()
    try:
        url = _await_ready(proc, listening, found, timeout)
        yield BenchServer(url, list(command))
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; llama-server said:\n" + "\n".join(tail)) from None
    finally:
        terminate(proc, 30)


def _await_ready(proc: subprocess.Popen, listening: threading.Event, found: list[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    listening.wait(timeout)
    if not found:
        raise RuntimeError(f"llama-server exited with code {proc.poll()} before it listened"
                           if proc.poll() is not None else f"llama-server did not listen within {timeout:g} s")
    url = found[0]
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama-server exited with code {proc.returncode} while loading")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"llama-server's /health did not answer 200 within {timeout:g} s")
