"""`bastion bench failover`: take one rank of a supervised deployment down under steady load and
measure how long the supervisor takes to notice (detection), how long until the rank passes its
probes again (recovery), and the errors seen on the ranks left alone (the target is none).

`--fault kill` SIGKILLs the rank's process; `--fault hang` stops its API server (SIGSTOP), which
only failed probes can reveal. Without --url the bench starts the deployment itself (the demo
model by default) on a block of free ports; with --url it measures a running supervisor on this
machine, reading rank pids from /ranks with the key in BASTION_API_KEY.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx

from bastion.bench.harness import SUPERVISING, ServeProcess
from bastion.bench.ports import free_port_block
from bastion.launch.procs import descendants

TARGETS = {"detection_s": 1.5, "recovery_s": 10.0, "errors_on_healthy_ranks": 0}


def add_failover_bench_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="a running supervisor, e.g. https://127.0.0.1:9256 "
                        "(default: start a deployment here)")
    parser.add_argument("--model", default=None, help="model folder when the bench starts the deployment "
                        "(default: the demo model)")
    parser.add_argument("--ranks", type=int, default=2, help="ranks of the deployment the bench starts")
    parser.add_argument("--victim", type=int, default=None, help="rank to take down (default: the last)")
    parser.add_argument("--fault", choices=["kill", "hang"], default="kill",
                        help="kill: SIGKILL the rank; hang: SIGSTOP its API server")
    parser.add_argument("--probe-interval-s", type=float, default=0.5, help="the started deployment's "
                        "--dp-supervisor-probe-interval-s")
    parser.add_argument("--probe-timeout-s", type=float, default=1.0, help="its --dp-supervisor-probe-timeout-s")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight per rank")
    parser.add_argument("--max-tokens", type=int, default=16, help="tokens each load request generates")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="steady load before the fault")
    parser.add_argument("--timeout-s", type=float, default=180.0, help="give up waiting for recovery after this")
    parser.add_argument("--ssl-ca-certs", default=None, help="CA of an https deployment")
    parser.add_argument("--ssl-client-certfile", default=None, help="client certificate for mutual TLS")
    parser.add_argument("--ssl-client-keyfile", default=None, help="its key")
    parser.add_argument("--json", default=None, metavar="PATH", help="write the results as JSON")


class Deployment:
    """The supervisor to measure: given by --url, or started here and stopped at the end."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.server: ServeProcess | None = None  # the deployment, when started here
        self.http = {"timeout": 10, "verify": _verify(args)}
        key = os.environ.get("BASTION_API_KEY", "").split(",")[0].strip()
        if key:
            self.http["headers"] = {"Authorization": f"Bearer {key}"}
        self.url = args.url.rstrip("/") if args.url else self._start()

    def _start(self) -> str:
        from bastion.model.demo import default_model_path

        a = self.args
        self.server = ServeProcess(
            [a.model or str(default_model_path()), "--data-parallel-multi-port-external-lb", "-dp", str(a.ranks),
             "--port", str(free_port_block(a.ranks)), "--data-parallel-supervisor-port", "0",
             "--dp-supervisor-probe-interval-s", str(a.probe_interval_s),
             "--dp-supervisor-probe-timeout-s", str(a.probe_timeout_s)], SUPERVISING, capture_stderr=False)
        return self.server.wait_ready(600, "the benchmark's deployment")["url"]

    def ranks(self) -> list[dict]:
        reply = httpx.get(f"{self.url}/ranks", **self.http)
        if reply.status_code != 200:
            raise ValueError(f"GET {self.url}/ranks answered {reply.status_code}: {reply.text[:200]} "
                             "(a key with the metrics scope in BASTION_API_KEY?)")
        return reply.json()["data"]

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(120)


def _verify(args: argparse.Namespace):
    import ssl

    context = ssl.create_default_context(cafile=args.ssl_ca_certs)
    if args.ssl_client_certfile:
        context.load_cert_chain(args.ssl_client_certfile, args.ssl_client_keyfile)
    return context


class SteadyLoad:
    """`concurrency` closed-loop clients per rank; counts successes and errors per rank."""

    def __init__(self, deployment: Deployment, urls: list[str], concurrency: int, max_tokens: int) -> None:
        self.deployment, self.urls, self.max_tokens = deployment, urls, max_tokens
        self.ok = [0] * len(urls)
        self.errors: list[list[str]] = [[] for _ in urls]
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(len(urls)) for _ in range(concurrency)]
        self.model = self._model()

    def _model(self) -> str:
        reply = httpx.get(f"{self.urls[0]}/v1/models", **self.deployment.http)
        reply.raise_for_status()
        return reply.json()["data"][0]["id"]

    def _client(self, rank: int) -> None:
        body = {"model": self.model, "prompt": "Once upon a time", "max_tokens": self.max_tokens,
                "ignore_eos": True}
        options = {**self.deployment.http, "timeout": 120}
        with httpx.Client(**options) as client:
            while not self.stopping.is_set():
                try:
                    reply = client.post(f"{self.urls[rank]}/v1/completions", json=body)
                    if reply.status_code == 200:
                        self.ok[rank] += 1
                        continue
                    self.errors[rank].append(f"HTTP {reply.status_code}")
                except httpx.HTTPError as exc:
                    self.errors[rank].append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.05)  # a down rank refuses at once: do not spin

    def __enter__(self) -> "SteadyLoad":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(150)


def inject(fault: str, pid: int) -> None:
    if fault == "kill":
        os.kill(pid, signal.SIGKILL)
        return
    for child in descendants(pid):
        try:
            if b"api-server" in Path(f"/proc/{child}/cmdline").read_bytes():
                os.kill(child, signal.SIGSTOP)
                return
        except OSError:
            continue
    raise RuntimeError(f"rank process {pid} has no API server to hang")


def measure(deployment: Deployment, args: argparse.Namespace) -> dict:
    rows = deployment.ranks()
    victim = len(rows) - 1 if args.victim is None else args.victim
    if not 0 <= victim < len(rows) or len(rows) < 2:
        raise ValueError(f"--victim must name one of {len(rows)} ranks, and another must stay up")
    before = rows[victim]
    if any(row["state"] != "ready" for row in rows):
        raise RuntimeError(f"not every rank is ready: {[row['state'] for row in rows]}")
    with SteadyLoad(deployment, [row["url"] for row in rows], args.concurrency, args.max_tokens) as load:
        time.sleep(args.warmup_s)
        started = time.monotonic()
        inject(args.fault, before["pid"])
        detection = recovery = None
        while time.monotonic() - started < args.timeout_s:
            row = deployment.ranks()[victim]
            now = time.monotonic() - started
            if detection is None and (row["state"] != "ready" or row["pid"] != before["pid"]):
                detection = now
            if detection is not None and row["state"] == "ready" and row["restarts"] > before["restarts"]:
                recovery = now
                break
            time.sleep(0.02)
        time.sleep(1.0)  # the healthy ranks keep serving after the recovery as well
    healthy = [i for i in range(len(rows)) if i != victim]
    result = {
        "fault": args.fault, "ranks": len(rows), "victim": victim,
        "detection_s": None if detection is None else round(detection, 3),
        "recovery_s": None if recovery is None else round(recovery, 3),
        "errors_on_healthy_ranks": sum(len(load.errors[i]) for i in healthy),
        "requests_on_healthy_ranks": sum(load.ok[i] for i in healthy),
        "errors_on_victim": len(load.errors[victim]), "requests_on_victim": load.ok[victim],
        "first_healthy_errors": [e for i in healthy for e in load.errors[i]][:5],
    }
    result["targets"] = TARGETS
    result["targets_met"] = {name: result[name] is not None and result[name] <= limit
                             for name, limit in TARGETS.items()}
    return result


def run_failover_bench(args: argparse.Namespace) -> int:
    if args.ranks < 2:
        raise ValueError(f"--ranks must be at least 2 (one to take down, one to keep serving), got {args.ranks}")
    deployment = Deployment(args)
    try:
        result = measure(deployment, args)
    finally:
        deployment.stop()
    result.update(probe_interval_s=None if args.url else args.probe_interval_s,
                  probe_timeout_s=None if args.url else args.probe_timeout_s)
    print(f"failover ({args.fault} rank {result['victim']} of {result['ranks']}): detection "
          f"{result['detection_s']} s, ready again {result['recovery_s']} s, "
          f"{result['errors_on_healthy_ranks']} errors in {result['requests_on_healthy_ranks']} requests "
          f"on the healthy ranks ({result['errors_on_victim']} on the rank taken down)")
    print("targets: " + ", ".join(f"{name} <= {limit}: {'met' if result['targets_met'][name] else 'MISSED'}"
                                  for name, limit in TARGETS.items()))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"results written to {args.json}")
    return 0 if result["recovery_s"] is not None and result["errors_on_healthy_ranks"] == 0 else 1
