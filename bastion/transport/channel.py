"""ZMQ plumbing: listeners that bind first and report their real endpoint, and CurveZMQ.

Whoever listens binds to port 0 (or an ipc path in a private 0700 directory) and reports
`zmq.LAST_ENDPOINT`; nothing ever probes for a free port to bind later. TCP sockets use
CurveZMQ: the server has a keypair and admits clients only by their public keys (ZAP).
"""
from __future__ import annotations

import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.auth.thread

logger = logging.getLogger(__name__)


def private_ipc_dir() -> Path:
    """A fresh directory only this user can enter, for ipc:// sockets."""
    path = Path(tempfile.mkdtemp(prefix="bastion-ipc-"))
    os.chmod(path, 0o700)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    return path


def bind(sock: zmq.Socket, address: str) -> str:
    """Bind to `tcp://HOST:0` or `ipc://PATH` and return the endpoint actually bound."""
    sock.bind(address)
    return sock.getsockopt_string(zmq.LAST_ENDPOINT)


@dataclass(frozen=True)
class CurveKeyPair:
    """A Curve25519 keypair in Z85 text; the secret half never shows in repr or logs."""

    public: bytes
    secret: bytes = field(repr=False)

    @classmethod
    def generate(cls) -> "CurveKeyPair":
        public, secret = zmq.curve_keypair()
        return cls(public, secret)


class _AllowedKeys:
    def __init__(self, allowed: set[bytes]) -> None:
        self.allowed = allowed

    def callback(self, domain: str, key: bytes) -> bool:
        """`key` is the client's public key in Z85, as pyzmq's authenticator passes it."""
        ok = key in self.allowed
        if not ok:
            logger.warning("refused a CURVE client whose public key is not allowed")
        return ok


class CurveGate:
    """ZAP handler for one context: admits CURVE clients whose public key is in `allowed`."""

    def __init__(self, ctx: zmq.Context, allowed: set[bytes]) -> None:
        self._auth = zmq.auth.thread.ThreadAuthenticator(ctx, log=logger)
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=_AllowedKeys(allowed))

    def stop(self) -> None:
        self._auth.stop()


def curve_server(sock: zmq.Socket, keys: CurveKeyPair) -> zmq.Socket:
    """Make `sock` a CURVE server (call before bind)."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_server = True
    return sock


def curve_client(sock: zmq.Socket, keys: CurveKeyPair, server_public: bytes) -> zmq.Socket:
    """Make `sock` a CURVE client of the server with `server_public` (call before connect)."""
    sock.curve_secretkey = keys.secret
    sock.curve_publickey = keys.public
    sock.curve_serverkey = server_public
    return sock
