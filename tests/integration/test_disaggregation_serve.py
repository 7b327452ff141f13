"""`bastion serve -dp 2 --prefill-ranks 1`: rank 0 prefills, rank 1 pulls the KV and decodes.
Greedy outputs equal a colocated deployment's (streamed and not) and every block is free on
both ranks afterwards; a prefill rank SIGKILLed between prefill and pull leaves the request to
be recomputed (`recompute`) or failed with a 503 (`fail`); an unpulled lease runs out and frees
its blocks. The decode rank is held between prefill and pull with SIGSTOP."""
from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import psutil
from openai import OpenAI

from server_process import ServerProcess

MODEL = "bastion-demo"
# NOTE: some prompts long enough for prefix affinity (32+ tokens), which must never send a
# request's decode to its prefill rank
PROMPTS = [f"Once upon a time {i} there was" + " a little" * (5 * (i % 5)) for i in range(16)]
ARGS = ("--dtype", "float32", "--enforce-eager")  # as the API tests' server, the reference


def _completions(server: ServerProcess, stream: bool) -> list[str]:
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    texts = []
    for prompt in PROMPTS:
        if stream:
            chunks = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0,
                                               stream=True)
            texts.append("".join(c.choices[0].text for c in chunks if c.choices))
        else:
            texts.append(client.completions.create(model=MODEL, prompt=prompt, max_tokens=12,
                                                   temperature=0).choices[0].text)
    return texts


def _engine(server: ServerProcess, rank: int) -> psutil.Process:
    return next(p for p in psutil.Process(server.proc.pid).children(recursive=True)
                if f"engine-{rank}" in " ".join(p.cmdline()))


def _held_between_prefill_and_pull(server: ServerProcess, body: dict) -> tuple[threading.Thread, dict]:
    """SIGSTOP the decode rank, send `body`, return once the prefill rank holds its KV."""
    os.kill(_engine(server, 1).pid, signal.SIGSTOP)
    answer: dict = {}

    def send() -> None:
        response = httpx.post(f"{server.url}/v1/completions", json=body, timeout=120)
        answer.update(status=response.status_code, body=response.json(), at=time.monotonic())

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    assert server.wait_for_metric("bastion_kv_leases", lambda v: v == 1, timeout=60, rank="0") == 1
    return sender, answer


BODY = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0, "ignore_eos": True}


def test_one_prefill_and_one_decode_rank_answer_as_colocated_ranks_and_recompute_a_lost_pull(shared_server):
    """The colocated reference is the API tests' server (-dp 2, the same model and flags)."""
    server = ServerProcess("-dp", "2", "--prefill-ranks", "1", *ARGS, timeout=240)
    decode = _engine(server, 1)
    try:
        colocated = _completions(shared_server, stream=False)
        assert _completions(server, stream=False) == colocated
        assert _completions(server, stream=True) == colocated
        assert server.metric("bastion_kv_transfers_total", rank="1") == 2 * len(PROMPTS)
        assert server.metric("bastion_kv_transfer_seconds_count", rank="1") == 2 * len(PROMPTS)
        assert server.metric("bastion_kv_transfer_bytes_total", rank="1") > 0
        assert server.metric("bastion_kv_transfer_fallbacks_total", rank="1") == 0
        assert server.wait_for_metric("bastion_kv_leases", lambda v: v == 0, rank="0") == 0
        for rank in ("0", "1"):  # every block back in the pool on both ranks
            assert server.wait_for_metric("bastion_kv_cache_usage_ratio", lambda v: v == 0, rank=rank) == 0
        # the prefill rank dies between prefill and pull: the decode rank recomputes the prompt
        sender, answer = _held_between_prefill_and_pull(server, BODY)
        _engine(server, 0).kill()
        os.kill(decode.pid, signal.SIGCONT)
        sender.join(60)
        assert answer["status"] == 200 and answer["body"]["usage"]["completion_tokens"] == 8, answer
        assert server.wait_for_metric("bastion_kv_transfer_fallbacks_total", lambda v: v == 1, rank="1") == 1
        assert server.sigterm_leaves_nothing()
    finally:
        if decode.is_running():
            os.kill(decode.pid, signal.SIGCONT)
        server.kill()


def test_an_unpulled_lease_expires_and_under_fail_a_lost_pull_is_a_503():
    server = ServerProcess("-dp", "2", "--prefill-ranks", "1", "--kv-load-failure-policy", "fail",
                           "--kv-lease-s", "1", *ARGS, timeout=240)
    decode = _engine(server, 1)
    try:
        sender, answer = _held_between_prefill_and_pull(server, BODY)
        assert server.wait_for_metric("bastion_kv_lease_expiries_total", lambda v: v == 1, rank="0") == 1
        assert server.wait_for_metric("bastion_kv_leases", lambda v: v == 0, rank="0") == 0
        assert server.wait_for_metric("bastion_kv_cache_usage_ratio", lambda v: v == 0, rank="0") == 0
        _engine(server, 0).kill()
        resumed = time.monotonic()
        os.kill(decode.pid, signal.SIGCONT)
        sender.join(60)
        assert answer["status"] == 503, answer
        assert "could not be loaded from its prefill rank" in answer["body"]["error"]["message"]
        assert answer["at"] - resumed < 2  # the pull gives up after 1 s without an answer
        assert server.wait_for_metric("bastion_kv_transfer_fallbacks_total", lambda v: v == 1, rank="1") == 1
    finally:
        if decode.is_running():
            os.kill(decode.pid, signal.SIGCONT)
        server.kill()


def _serve_fails(*args: str):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "bastion.cli", "serve", *args, "--port", "0"],
                          capture_output=True, text=True, timeout=120)


def test_deployments_that_cannot_disaggregate_are_refused_with_the_flag():
    done = _serve_fails("-dp", "2", "--prefill-ranks", "2")
    assert done.returncode == 2 and "--prefill-ranks 2 must leave at least one" in done.stderr
    done = _serve_fails("--kv-role", "prefill")
    assert done.returncode == 2 and "--kv-role prefill gives every rank of this node that role" in done.stderr
