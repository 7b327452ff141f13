"""Free ports for benchmarks and tests that must name fixed ports (the multi-port mode needs
`--port` to be fixed). The server itself never picks ports this way: this is a choice made by a
harness on its own machine, checked just before use."""
from __future__ import annotations

import socket


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """A first port P such that P .. P+count-1 are free right now."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind((host, 0))
            base = first.getsockname()[1]
        if base + count > 65535:
            continue
        held = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                held.append(sock)
                sock.bind((host, port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no block of {count} free ports found on {host}")
