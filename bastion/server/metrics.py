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
KV_TRANSFERS = Gauge("bastion_kv_transfers_total", "Disaggregated serving: KV pulls a decode rank "
                     "completed since it started", ["rank"], multiprocess_mode="mostrecent")
KV_TRANSFER_BYTES = Gauge("bastion_kv_transfer_bytes_total", "Bytes of KV a decode rank pulled since it "
                          "started", ["rank"], multiprocess_mode="mostrecent")
KV_FALLBACKS = Gauge("bastion_kv_transfer_fallbacks_total", "KV pulls that failed on a decode rank "
                     "(recomputed there, or failed by --kv-load-failure-policy fail)", ["rank"],
                     multiprocess_mode="mostrecent")
KV_LEASE_EXPIRIES = Gauge("bastion_kv_lease_expiries_total", "Held KV blocks a prefill rank freed "
                          "because no decode rank pulled them within --kv-lease-s", ["rank"],
                          multiprocess_mode="mostrecent")
KV_LEASES = Gauge("bastion_kv_leases", "KV block leases a prefill rank holds now", ["rank"],
                  multiprocess_mode="mostrecent")
KV_TRANSFER_SECONDS = Histogram("bastion_kv_transfer_seconds", "Time of one KV pull, on the decode rank",
                                ["rank"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                                   0.5, 1.0, 2.5))

RESPONSES_STORED = Gauge("bastion_responses_stored", "Responses the response store keeps now "
                         "(/v1/responses with store)", multiprocess_mode="mostrecent")
RESPONSES_STORED_BYTES = Gauge("bastion_responses_stored_bytes", "Bytes of the responses the response "
                               "store keeps now", multiprocess_mode="mostrecent")
RESPONSES_NOT_KEPT = Counter("bastion_responses_not_kept_total", "Responses answered but not kept: "
                             "larger than --responses-store-max-response-bytes")


_last_load: dict[int, tuple] = {}


def record_load(rank: int, load: EngineLoad) -> None:
    """Set a rank's gauges from the load it published (after every step it makes); nothing when
    they would not change (a gauge's set writes the multi-process file)."""
    shown = (load.num_running, load.num_waiting, load.kv_cache_usage, load.prefix_cache_hit_rate,
             load.num_preemptions, load.kv_transfers, load.kv_fallbacks, load.kv_lease_expiries, load.kv_leases)
    if _last_load.get(rank) == shown:
        return
    _last_load[rank] = shown
    label = str(rank)
    RUNNING.labels(label).set(load.num_running)
    WAITING.labels(label).set(load.num_waiting)
    KV_USAGE.labels(label).set(load.kv_cache_usage)
    PREFIX_HIT_RATE.labels(label).set(load.prefix_cache_hit_rate)
    PREEMPTIONS.labels(label).set(load.num_preemptions)
    if load.kv_transfers or load.kv_fallbacks or load.kv_lease_expiries or load.kv_leases or label in _kv_ranks:
        _kv_ranks.add(label)  # NOTE: only ranks that take part in disaggregated serving show these
        KV_TRANSFERS.labels(label).set(load.kv_transfers)
        KV_TRANSFER_BYTES.labels(label).set(load.kv_transfer_bytes)
        KV_FALLBACKS.labels(label).set(load.kv_fallbacks)
        KV_LEASE_EXPIRIES.labels(label).set(load.kv_lease_expiries)
        KV_LEASES.labels(label).set(load.kv_leases)


_kv_ranks: set[str] = set()


def record_kv_pulls(rank: int, seconds: list[float]) -> None:
    """The KV pulls a decode rank finished for this API server's requests."""
    for value in seconds:
        KV_TRANSFER_SECONDS.labels(str(rank)).observe(value)


def record_queue_length(queued: int) -> None:
    """The server-wide admission queue, as the limits service last reported it."""
    WAITING.labels(QUEUE_LABEL).set(queued)


def record_responses_stored(count: int, size: int) -> None:
    """The response store's size, as it last reported it."""
    RESPONSES_STORED.set(count)
    RESPONSES_STORED_BYTES.set(size)


def record_rank_up(rank: int, up: bool) -> None:
    RANK_UP.labels(str(rank)).set(1 if up else 0)


def exposition() -> bytes:
    """The text format of every API server's metrics together."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)
