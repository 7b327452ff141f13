"""What a bench's JSON holds so that someone else can repeat it: the bench's own command line
(secrets taken out), bastion's version and commit, the versions of what it runs on, the machine
(CPU, cores, flags) and its memory bandwidth measured at the start of the run; each side adds
its own full command line (`side_record`)."""
from __future__ import annotations

import datetime
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Sequence

from bastion.bench.machine import machine_summary, memory_bandwidth

# Flags whose value is a secret: kept out of every record (the value, not the flag).
SECRET_FLAGS = ("--api-key",)
PACKAGES = ("torch", "transformers", "tokenizers", "numpy", "msgspec", "pyzmq", "uvicorn", "httpx",
            "llguidance", "gguf")


def scrub(argv: Sequence[str]) -> list[str]:
    """`argv` with the value of every secret flag replaced ('--api-key X' and '--api-key=X')."""
    out, hide = [], False
    for arg in argv:
        if hide:
            out.append("<hidden>")
            hide = False
        elif arg in SECRET_FLAGS:
            out.append(arg)
            hide = True
        elif any(arg.startswith(flag + "=") for flag in SECRET_FLAGS):
            out.append(arg.split("=", 1)[0] + "=<hidden>")
        else:
            out.append(arg)
    return out


def bastion_commit() -> dict:
    """The git commit of the bastion checkout that runs (and whether its tree has changes), or
    None where bastion is not a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def versions() -> dict:
    """bastion's and its main libraries' versions, and Python's."""
    import bastion

    found = {"bastion": bastion.__version__, "python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def run_record(bandwidth: dict | None = None) -> dict:
    """The run's record: when, the bench's command line, bastion's commit and versions, the machine
    and its memory bandwidth (measured now unless given: measure before any server starts)."""
    return {"started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "bench_command": scrub(["bastion", *sys.argv[1:]]) if sys.argv else [],
            "bastion": bastion_commit(), "versions": versions(), "machine": machine_summary(),
            "memory_bandwidth": bandwidth if bandwidth is not None else memory_bandwidth()}


def side_record(name: str, command: Sequence[str], **more) -> dict:
    """One side as the JSON says it: its name and the full command line that started it."""
    return {"name": name, "command": scrub(command), **more}


def say_machine(record: dict) -> None:
    """One line about the machine and its bandwidth, for the bench's printout."""
    machine, bw = record["machine"], record["memory_bandwidth"]
    commit = record["bastion"]["commit"]
    print(f"machine: {machine['cpu']}, {machine['usable_cores']} usable cores, flags "
          f"{' '.join(machine['cpu_flags'])}; memory {bw['read_gb_s']} GB/s read, {bw['copy_gb_s']} "
          f"copy (measured now); bastion {record['versions']['bastion']} at "
          f"{(commit or 'no commit')[:12]}{' (changed)' if record['bastion']['dirty'] else ''}")
