"""bastion beside another server under the same load: `--compare-url URL` (a server already
running, started by hand) or `--peer-llama-server PATH --peer-model GGUF` (llama.cpp's
llama-server, started here once per concurrency the way its users start it:
`bench/peer/llama_server.py`). bastion is started on --model with the engine flags and stays up;
the peer is the first side, so the ratios read bastion / peer.
"""
from __future__ import annotations

import argparse
import os
import shlex
from contextlib import ExitStack

from bastion.bench.harness import bench_server
from bastion.bench.peer.llama_server import (check_peer_files, llama_server_command, llama_server_version,
                                             slot_context, started_llama_server)
from bastion.bench.provenance import side_record
from bastion.bench.serve.compare import ServeSide, over_concurrencies
from bastion.bench.workloads import bench_inputs, longest_request


def compare_url(args: argparse.Namespace) -> dict:
    """bastion against the server at --compare-url (reached with no key or client certificate)."""
    peer_client = argparse.Namespace(**{**vars(args), "api_key": None, "served_model": None,
                                        "ssl_client_certfile": None, "ssl_client_keyfile": None})
    with bench_inputs(args) as (model, label, vocab), bench_server(model, args) as server:
        peer = ServeSide("peer", side_record("peer", [], url=args.compare_url,
                                             note="started by hand: its command line is not known here"),
                         url=args.compare_url.rstrip("/"), client=peer_client)
        ours = ServeSide("bastion", side_record("bastion", server.command, model=label), url=server.url)
        return over_concurrencies(args, vocab, [peer, ours])


def compare_llama_server(args: argparse.Namespace) -> dict:
    """bastion against llama-server on --peer-model, started anew for each concurrency with
    -np = the concurrency."""
    check_peer_files(args.peer_llama_server, args.peer_model)
    version = llama_server_version(args.peer_llama_server)
    threads = args.num_threads or len(os.sched_getaffinity(0))
    extra = shlex.split(args.peer_flags)
    peer_client = argparse.Namespace(**{**vars(args), "api_key": None, "served_model": None,
                                        "ssl_client_certfile": None, "ssl_client_keyfile": None,
                                        "ssl_ca_certs": None})

    context = slot_context(longest_request(args))

    def peer_side(at: argparse.Namespace, stack: ExitStack) -> list[ServeSide]:
        command = llama_server_command(args.peer_llama_server, args.peer_model, at.concurrency, context,
                                       threads, extra)
        print(f"starting llama-server: {' '.join(command)}")
        server = stack.enter_context(started_llama_server(command))
        return [ServeSide("llama.cpp", side_record("llama.cpp", server.command, version=version,
                                                   model=args.peer_model, slots=at.concurrency,
                                                   context_per_slot=context),
                          url=server.url, client=peer_client)]

    with bench_inputs(args) as (model, label, vocab), bench_server(model, args) as server:
        ours = ServeSide("bastion", side_record("bastion", server.command, model=label), url=server.url)
        return over_concurrencies(args, vocab, [ours], per_concurrency=peer_side)
