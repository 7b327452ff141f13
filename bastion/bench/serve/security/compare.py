"""`bastion bench serve --compare-security`: what bastion's protections cost, all of them at once.

One run, two servers of the same model up side by side, the same requests at the same
concurrency against each, in ABBA pairs (`serve/compare.py`: plain, secure, secure, plain, ...)
so that drift on a shared machine falls on both sides alike, each pair with requests of its
own. Before the first pair each side serves one untimed batch, so warming up counts against
neither side.

* plain: everything off. HTTP, no credentials (so no limits service), no audit log, the
  engine reached over ipc.
* secure: everything on. HTTPS with a certificate made for the run (the client verifies it
  against the run's CA), an API key from a keys file (its digest only; the client holds the key
  in memory), per-key limits checked on every request but set so they never refuse one, an
  audit log in the run's folder, the engine reached over TCP with CurveZMQ.

Everything made for the run lives in a private temporary folder, removed at the end. The
ratios read secure / plain: the median of the pairs' ratios and its 95% interval.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bastion.bench.harness import bench_server
from bastion.bench.provenance import side_record
from bastion.bench.serve.compare import ServeSide, over_concurrencies
from bastion.bench.serve.security.run_secrets import RunSecrets, make_run_secrets
from bastion.bench.workloads import bench_model

PLAIN_FLAGS = ("--internal-transport", "ipc")
SIDES = ("plain", "secure")


def compare_security(args: argparse.Namespace) -> dict:
    """Run the comparison (both servers up at once; see the module's docstring)."""
    if os.environ.get("BASTION_API_KEY"):
        raise ValueError("unset BASTION_API_KEY for --compare-security: the plain server must run "
                         "without credentials (the secure one gets a key made for the run)")
    with tempfile.TemporaryDirectory(prefix="bastion-bench-security-") as tmp:
        folder = Path(tmp)  # NOTE: mkdtemp makes it 0700: the key, keys file and audit log stay private
        model, label, vocab = bench_model(args, folder)
        run = make_run_secrets(folder, max(args.concurrency))
        flags = {"plain": PLAIN_FLAGS, "secure": secure_flags(run, folder / "audit.jsonl")}
        clients = {"plain": client_args(args), "secure": client_args(args, run)}
        with ExitStack() as servers:
            sides = []
            for name in SIDES:
                server = servers.enter_context(bench_server(model, args, flags[name]))
                sides.append(ServeSide(name, side_record(name, server.command, model=label, **describe(name)),
                                       url=server.url, client=clients[name]))
            result = over_concurrencies(args, vocab, sides)
        audit_lines = _count_lines(folder / "audit.jsonl")
    for comparison in result.values():
        comparison["audit_lines"] = audit_lines
    return result


def secure_flags(run: RunSecrets, audit_log: Path) -> tuple[str, ...]:
    """`bastion serve` flags that turn every protection on (no secret among them: paths only)."""
    return ("--ssl-keyfile", str(run.key), "--ssl-certfile", str(run.cert),
            "--api-key-file", str(run.keys_file), "--audit-log", str(audit_log),
            "--internal-transport", "tcp", "--internal-encryption", "on")


def client_args(args: argparse.Namespace, run: RunSecrets | None = None) -> argparse.Namespace:
    """The bench's flags for one side's load generator: no credentials, or the run's key (in
    memory) and CA."""
    return argparse.Namespace(**{**vars(args), "api_key": run.api_key if run else None,
                                 "ssl_ca_certs": str(run.ca) if run else None,
                                 "ssl_client_certfile": None, "ssl_client_keyfile": None})


def describe(side: str) -> dict:
    """One side's settings, for the JSON."""
    secure = side == "secure"
    return {"http": "https (TLS, verified by the client)" if secure else "http",
            "auth": "API key from --api-key-file" if secure else "none",
            "limits": "per-key limits, never binding" if secure else "none (no limits service)",
            "audit_log": secure,
            "internal": "tcp + CurveZMQ" if secure else "ipc"}


def _count_lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0
