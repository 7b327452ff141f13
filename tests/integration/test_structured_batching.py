"""Constrained decoding in the engine's batches, seen from outside: constrained and free requests
at once, `n` > 1, a KV pool so small that requests are preempted and recomputed, two data-parallel
ranks; every output obeys its constraint, greedy outputs equal the same request sent alone, and
no KV block is left held afterwards (`bastion_kv_cache_usage_ratio` back to 0 on every rank).

The suite's shared server (demo model, -dp 2) takes the mixed, n > 1 and DP loads; a one-rank
server with a 12-block pool (192 tokens) takes the preemption load.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from server_process import ServerProcess
from structured_cases import (CHOICES, DATE_REGEX, MAX_TOKENS, PERSON_SCHEMA, check_choice,
                              check_fullmatch, check_json_schema, openai_client)

MODEL = "demo"
KV_USAGE, RANK_REQUESTS = "bastion_kv_cache_usage_ratio", "bastion_rank_requests_total"
PREEMPTIONS = "bastion_num_preemptions"
# Letters and spaces: a byte-level BPE never has a token spanning " a b", so this takes at least
# 60 tokens (4 blocks of 16): 12 such requests at once need far more than a 12-block pool.
LETTERS = r"[a-z]( [a-z]){59}"
POOL_BLOCKS = 12
CONSTRAINTS = {
    "json": ({"json": PERSON_SCHEMA}, lambda t: check_json_schema(t, PERSON_SCHEMA)),
    "regex": ({"regex": DATE_REGEX}, lambda t: check_fullmatch(t, DATE_REGEX)),
    "choice": ({"choice": CHOICES}, check_choice),
    "letters": ({"regex": LETTERS}, lambda t: check_fullmatch(t, LETTERS)),
}


def prompt(i: int) -> str:
    """Short (no prefix affinity, under 32 tokens) and distinct (no shared prefix blocks)."""
    return f"Example {i}: the value of x{i} is"


def ask(client, i: int, kind: str | None, n: int = 1, temperature: float = 0.0) -> list[tuple[str, str]]:
    """One /v1/completions request; (text, finish_reason) per choice. kind None: free text."""
    extra = {"structured_outputs": CONSTRAINTS[kind][0]} if kind else {"ignore_eos": True}
    r = client.completions.create(model=MODEL, prompt=prompt(i), n=n, temperature=temperature, seed=i,
                                  max_tokens=MAX_TOKENS if kind else 40, extra_body=extra)
    return [(c.text, c.finish_reason) for c in sorted(r.choices, key=lambda c: c.index)]


def check(kind: str | None, choices: list[tuple[str, str]]) -> None:
    for text, reason in choices:
        if kind is None:
            assert reason == "length", (text, reason)
        else:
            assert reason == "stop", (kind, text)
            CONSTRAINTS[kind][1](text)


def burst(client, jobs: list[tuple[int, str | None, int, float]]) -> list:
    """All jobs at once (one thread each, bounded by the list), answers in job order."""
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return list(pool.map(lambda job: ask(client, *job), jobs))


def kv_released(server, ranks: int) -> list[float]:
    """Each rank's KV usage once it settles at 0 (or what it shows after 15 s)."""
    return [server.wait_for_metric(KV_USAGE, lambda v: v == 0, rank=str(r)) for r in range(ranks)]


def test_constrained_free_and_n_in_one_batch_on_two_ranks_leave_no_blocks(shared_server):
    shared = shared_server
    client = openai_client(shared)
    greedy = [(i, kind, 1, 0.0) for i, kind in enumerate([None, "json", "regex", None, "choice", "letters"])]
    alone = [ask(client, *job) for job in greedy]
    for (_, kind, _, _), got in zip(greedy, alone):
        check(kind, got)
    sampled = [(10 + i, kind, 3, 1.0) for i, kind in enumerate(["json", "regex", "choice", "letters", None])]
    before = [shared.metric(RANK_REQUESTS, rank=str(r)) for r in (0, 1)]
    results = burst(client, greedy + sampled + greedy)
    after = [shared.metric(RANK_REQUESTS, rank=str(r)) for r in (0, 1)]
    for (_, kind, n, _), got in zip(greedy + sampled + greedy, results):
        assert len(got) == n
        check(kind, got)
    # batched with others, greedy rows (constrained or free) give what they gave alone
    assert results[:len(greedy)] == alone
    assert results[-len(greedy):] == alone
    assert all(a > b for a, b in zip(after, before)), f"both ranks must serve: {before} -> {after}"
    assert kv_released(shared, 2) == [0, 0]


@pytest.fixture(scope="module")
def small_pool():
    proc = ServerProcess("--served-model-name", MODEL, "--dtype", "float32", "--num-kv-blocks",
                         str(POOL_BLOCKS), "--block-size", "16")
    yield proc
    proc.kill()


def test_preempted_constrained_requests_recompute_the_same_valid_output(small_pool):
    """12 long constrained requests (and 2 free ones) at once in a 12-block pool: they cannot all
    hold their blocks, so the newest are preempted and recomputed, matcher included; each output
    must still obey its constraint and equal the same request run alone."""
    client = openai_client(small_pool)
    jobs = [(i, "letters" if i % 3 else "json", 1, 0.0) for i in range(12)] + [(12, None, 1, 0.0), (13, None, 1, 0.0)]
    alone = [ask(client, *job) for job in jobs]
    before = small_pool.metric(PREEMPTIONS, rank="0")
    results = burst(client, jobs)
    preempted = small_pool.metric(PREEMPTIONS, rank="0") - before
    for (_, kind, _, _), got in zip(jobs, results):
        check(kind, got)
    assert results == alone
    assert preempted > 0, "no sequence was preempted: the test put no pressure on the pool"
    assert kv_released(small_pool, 1) == [0]
    # the server still serves afterwards, constrained and free
    check("regex", ask(client, 99, "regex"))
    check(None, ask(client, 98, None))
