"""A host as it is written in a URL or a ZMQ endpoint: an IPv6 address goes in brackets."""
from __future__ import annotations


def url_host(host: str) -> str:
    """`host` as written before `:PORT`: `[::1]` for an IPv6 address, else `host` itself."""
    return f"[{host}]" if ":" in host else host
