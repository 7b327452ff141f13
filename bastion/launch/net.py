"""Which address this node's internal listeners bind: `BASTION_HOST_IP` when the node sets it,
else the address this node uses to reach the head (the kernel's route choice: connecting a UDP
socket sends no packet), else loopback. Each node decides for itself; nothing is handed down."""
from __future__ import annotations

import os
import socket

HOST_IP_ENV = "BASTION_HOST_IP"


def node_address(toward: str | None = None) -> str:
    """This node's address for internal listeners (see the module docstring)."""
    explicit = os.environ.get(HOST_IP_ENV, "").strip()
    if explicit:
        return explicit
    if not toward:
        return "127.0.0.1"
    family = socket.AF_INET6 if ":" in toward else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((toward, 9))
            return probe.getsockname()[0]
    except OSError as exc:
        raise ValueError(f"cannot find this node's address toward {toward} (--data-parallel-address): "
                         f"{exc.strerror or exc}; set {HOST_IP_ENV}") from None
