"""Prometheus metrics of the API servers (prometheus-client, multi-process mode).

The launcher gives every API server the same private PROMETHEUS_MULTIPROC_DIR before this
module is imported, so `/metrics`, whichever process answers it, reports the whole server.
Per-rank gauges come from the load the engines publish (the most recent value wins).
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess

from bastion.transport.messages import EngineLoad

QUEUE_LABEL = "queue"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)

REQUESTS = Counter("bastion_http_requests_total", "HTTP requests by route and status code",
                   ["route", "status"])
PROMPT_TOKENS = Counter("bastion_prompt_tokens_total", "Prompt tokens of finished requests")
GENERATION_TOKENS = Counter("bastion_generation_tokens_total", "Generated tokens")
TIME_TO_FIRST_TOKEN = Histogram("bastion_time_to_first_token_seconds",
                                "Time from submission to the first token", buckets=_LATENCY_BUCKETS)
INTER_TOKEN_LATENCY = Histogram("bastion_inter_token_latency_seconds",
                                "Time between consecutive token deliveries", buckets=_ITL_BUCKETS)
E2E_LATENCY = Histogram("bastion_e2e_request_latency_seconds",
                        "Time from submission to the end of a request", buckets=_LATENCY_BUCKETS)
RANK_REQUESTS = Counter("bastion_rank_requests_total", "Requests sent to each engine rank", ["rank"])
RANK_UP = Gauge("bastion_engine_up", "1 while an engine rank is alive", ["rank"],
                multiprocess_mode="mostrecent")
RUNNING = Gauge("bastion_num_requests_running", "Sequences running in an engine rank", ["rank"],
                multiprocess_mode="mostrecent")
WAITING = Gauge("bastion_num_requests_waiting", "Sequences waiting in an engine rank; rank=\"queue\": "
                "requests the API servers admitted that wait for an engine slot (--max-queued-requests)",
                ["rank"], multiprocess_mode="mostrecent")
KV_USAGE = Gauge("bastion_kv_cache_usage_ratio", "Fraction of an engine rank's KV blocks in use",
                 ["rank"], multiprocess_mode="mostrecent")
PREFIX_HIT_RATE = Gauge("bastion_prefix_cache_hit_rate",
                        "Prompt tokens found in an engine rank's prefix cache / tokens looked up",
                        ["rank"], multiprocess_mode="mostrecent")
PREEMPTIONS = Gauge("bastion_num_preemptions", "Sequences an engine rank preempted (KV pool full; "
                    "recomputed later) since it started", ["rank"], multiprocess_mode="mostrecent")


_last_load: dict[int, tuple] = {}


def record_load(rank: int, load: EngineLoad) -> None:
    """Set a rank's gauges from the load it published (after every step it makes); nothing when
    they would not change (a gauge's set writes the multi-process file)."""
    shown = (load.num_running, load.num_waiting, load.kv_cache_usage, load.prefix_cache_hit_rate,
             load.num_preemptions)
    if _last_load.get(rank) == shown:
        return
    _last_load[rank] = shown
    label = str(rank)
    RUNNING.labels(label).set(load.num_running)
    WAITING.labels(label).set(load.num_waiting)
    KV_USAGE.labels(label).set(load.kv_cache_usage)
    PREFIX_HIT_RATE.labels(label).set(load.prefix_cache_hit_rate)
    PREEMPTIONS.labels(label).set(load.num_preemptions)


def record_queue_length(queued: int) -> None:
    """The server-wide admission queue, as the limits service last reported it."""
    WAITING.labels(QUEUE_LABEL).set(queued)


def record_rank_up(rank: int, up: bool) -> None:
    RANK_UP.labels(str(rank)).set(1 if up else 0)


def exposition() -> bytes:
    """The text format of every API server's metrics together."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)
