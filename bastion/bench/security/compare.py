"""`bastion bench serve --compare-security`: what bastion's protections cost, all of them at once.

One run, two servers of the same model up side by side, the same requests at the same
concurrency against each, interleaved (plain, secure, plain, secure, ... `--repeats` times) so
that drift on a shared machine falls on both sides alike. Before its first run each side serves
one untimed batch of the workload (its first `--concurrency` requests), so warming up counts
against neither side.

* plain: everything off. HTTP, no credentials (so no limits service), no audit log, the
  engine reached over ipc.
* secure: everything on. HTTPS with a certificate made for the run (the client verifies it
  against the run's CA), an API key from a keys file (its digest only; the client holds the key
  in memory), per-key limits checked on every request but set so they never refuse one, an
  audit log in the run's folder, the engine reached over TCP with CurveZMQ.

Everything made for the run lives in a private temporary folder, removed at the end. Prints a
table of output tokens/s per run and the mean; the JSON has each run, the means, their ratio
(`secure_over_plain`), both sides' settings and the machine.
"""
from __future__ import annotations

import argparse
import os
import tempfile
from contextlib import ExitStack
from pathlib import Path
from statistics import mean

from bastion.bench.harness import bench_server, engine_flags
from bastion.bench.machine import machine_summary
from bastion.bench.security.run_secrets import RunSecrets, make_run_secrets
from bastion.bench.serve_load import measure_serving
from bastion.bench.workloads import bench_model, workload

PLAIN_FLAGS = ("--internal-transport", "ipc")
SIDES = ("plain", "secure")


def compare_security(args: argparse.Namespace) -> dict:
    """Run the comparison; the result dict is what `--json` writes."""
    if args.repeats < 1:
        raise ValueError(f"--repeats must be at least 1, got {args.repeats}")
    if os.environ.get("BASTION_API_KEY"):
        raise ValueError("unset BASTION_API_KEY for --compare-security: the plain server must run "
                         "without credentials (the secure one gets a key made for the run)")
    with tempfile.TemporaryDirectory(prefix="bastion-bench-security-") as tmp:
        folder = Path(tmp)  # NOTE: mkdtemp makes it 0700: the key, keys file and audit log stay private
        model, label, vocab = bench_model(args, folder)
        reqs = workload(args, vocab)
        run = make_run_secrets(folder, args.concurrency)
        flags = {"plain": PLAIN_FLAGS, "secure": secure_flags(run, folder / "audit.jsonl")}
        runs: dict[str, list[dict]] = {side: [] for side in SIDES}
        with ExitStack() as servers:
            urls = {side: servers.enter_context(bench_server(model, args, flags[side])) for side in SIDES}
            print(f"plain server at {urls['plain']}, secure server at {urls['secure']}")
            clients = {"plain": client_args(args), "secure": client_args(args, run)}
            warmup = reqs[:args.concurrency]  # NOTE: a full batch first: the first run is no slower
            for repeat in range(1, args.repeats + 1):
                for side in SIDES:
                    print(f"--- {side}, run {repeat} of {args.repeats}")
                    runs[side].append(measure_serving(urls[side], clients[side], reqs,
                                                      warmup if repeat == 1 else None))
        audit_lines = _count_lines(folder / "audit.jsonl")
    result = summarize_sides(runs)
    result.update(model=label, repeats=args.repeats, machine=machine_summary(), engine_flags=engine_flags(args),
                  sides={"plain": describe("plain", flags["plain"]),
                         "secure": {**describe("secure", flags["secure"]), "audit_lines": audit_lines}})
    print_table(result)
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


def describe(side: str, flags: tuple[str, ...]) -> dict:
    """One side's settings, for the JSON (the folder's paths are gone after the run)."""
    secure = side == "secure"
    return {"flags": [Path(f).name if f.startswith("/") else f for f in flags],
            "http": "https (TLS, verified by the client)" if secure else "http",
            "auth": "API key from --api-key-file" if secure else "none",
            "limits": "per-key limits, never binding" if secure else "none (no limits service)",
            "audit_log": secure,
            "internal": "tcp + CurveZMQ" if secure else "ipc"}


def summarize_sides(runs: dict[str, list[dict]]) -> dict:
    """Means over the runs, their ratio, each run's ratio, and the errors of all runs."""
    tps = {side: [r["output_tokens_per_s"] for r in runs[side]] for side in SIDES}
    plain, secure = mean(tps["plain"]), mean(tps["secure"])
    return {"plain_output_tokens_per_s": round(plain, 2), "secure_output_tokens_per_s": round(secure, 2),
            "secure_over_plain": round(secure / plain, 3) if plain else None,
            "secure_over_plain_per_run": [round(s / p, 3) if p else None
                                          for p, s in zip(tps["plain"], tps["secure"])],
            "plain": runs["plain"], "secure": runs["secure"],
            "errors": sum(r["errors"] for side in SIDES for r in runs[side])}


def print_table(result: dict) -> None:
    print(f"\nsecurity off vs on, {result['model']}, output tokens/s:")
    print(f"{'run':>5} {'plain':>12} {'secure':>12} {'secure/plain':>13}")
    for i, ratio in enumerate(result["secure_over_plain_per_run"]):
        print(f"{i + 1:>5} {result['plain'][i]['output_tokens_per_s']:>12.1f} "
              f"{result['secure'][i]['output_tokens_per_s']:>12.1f} {ratio!s:>13}")
    print(f"{'mean':>5} {result['plain_output_tokens_per_s']:>12.1f} "
          f"{result['secure_output_tokens_per_s']:>12.1f} {result['secure_over_plain']!s:>13}")
    print(f"errors: {result['errors']}")


def _count_lines(path: Path) -> int:
    return sum(1 for _ in path.open()) if path.exists() else 0
