"""ZMQ plumbing: listeners that bind first and report their real endpoint, and CurveZMQ.

Whoever listens binds to port 0 (or an ipc path in a private 0700 directory) and reports
`zmq.LAST_ENDPOINT`; nothing ever probes for a free port to bind later. TCP sockets use
CurveZMQ: the server has a keypair and admits clients only by their public keys (ZAP).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import zmq
import zmq.auth.thread
from zmq.utils import z85

from bastion.config.deployment import InternalConfig
from bastion.transport.addresses import url_host

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
        self._keys = _AllowedKeys(set(allowed))
        self._auth = zmq.auth.thread.ThreadAuthenticator(ctx, log=logger)
        self._auth.start()
        self._auth.configure_curve_callback(domain="*", credentials_provider=self._keys)

    def admit(self, public: bytes) -> None:
        """Admit one more public key (a peer this process was told about by its own launcher)."""
        self._keys.allowed.add(public)

    def admit_only(self, publics: set[bytes]) -> None:
        """Admit these public keys and no others from now on (a handshake under way keeps its
        verdict)."""
        self._keys.allowed = set(publics)  # NOTE: one assignment: the ZAP thread reads either set

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


class ChannelKeys(msgspec.Struct, frozen=True):
    """One process's CURVE identity and the public keys it admits; travels only in a spec.
    `peers` (engines): the deployment's engine keys, which a prefill rank's KV listener admits."""

    public: bytes
    secret: bytes
    allowed: list[bytes]
    peers: list[bytes] = []

    def __repr__(self) -> str:
        return f"ChannelKeys(public={self.public!r}, allowed={len(self.allowed)} keys, peers={len(self.peers)} keys)"


MAX_API_SERVERS = 64  # NOTE: engines on other nodes admit the keys of API servers 0 .. 63


def engine_role(rank: int) -> str:
    return f"engine-{rank}"


def api_server_role(index: int) -> str:
    return f"api-server-{index}"


def deployment_keys(engines: int, api_servers: int, secret: bytes | None = None) -> list[ChannelKeys]:
    """A keypair per process of one deployment: the engines' first, then the API servers'.

    Engines admit API servers and API servers admit engines; engines' KV listeners admit the
    other engines (`peers`). Keys are random per launch, or
    derived from `secret` (the `--internal-secret-file` every node holds) by role, so a node
    holds the keys of its own engine ranks and admits API servers it was never told about.
    """
    if secret is None:
        pairs = [CurveKeyPair.generate() for _ in range(engines + api_servers)]
        engine_pairs, api_pairs = pairs[:engines], pairs[engines:]
        admitted_api = [p.public for p in api_pairs]
    else:
        engine_pairs = [derive_keypair(secret, engine_role(r)) for r in range(engines)]
        api_pairs = [derive_keypair(secret, api_server_role(j)) for j in range(api_servers)]
        admitted_api = [derive_keypair(secret, api_server_role(j)).public for j in range(MAX_API_SERVERS)]
    engine_publics = [p.public for p in engine_pairs]
    return ([ChannelKeys(p.public, p.secret, admitted_api, engine_publics) for p in engine_pairs]
            + [ChannelKeys(p.public, p.secret, engine_publics) for p in api_pairs])


def derive_keypair(secret: bytes, role: str) -> CurveKeyPair:
    """The CURVE keypair of `role` (e.g. `engine-3`) in the deployment of the shared secret."""
    raw = hmac.new(secret, f"bastion-curve-key:{role}".encode(), hashlib.sha256).digest()
    secret_z85 = z85.encode(raw)
    return CurveKeyPair(zmq.curve_public(secret_z85), secret_z85)


def read_internal_secret(path: str) -> bytes:
    """The `--internal-secret-file`: at least 32 bytes; errors name the flag and file."""
    try:
        data = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read {path} (--internal-secret-file): {exc.strerror}") from None
    if len(data) < 32:
        raise ValueError(f"{path} (--internal-secret-file) holds fewer than 32 bytes; "
                         "make one with: head -c 48 /dev/urandom | base64 > FILE")
    return data


class Listener:
    """Binds a process's listening sockets as `internal` says and admits only the deployment.

    ipc: `ipc://DIR/NAME` in the private directory. tcp: `tcp://HOST:0`, CURVE server with
    this process's keys, and a ZAP gate on the context admitting the allowed public keys.
    """

    def __init__(self, ctx: zmq.Context, internal: InternalConfig, ipc_dir: str,
                 keys: ChannelKeys | None) -> None:
        self.internal, self.ipc_dir = internal, ipc_dir
        self.keys = keys if internal.transport == "tcp" and internal.encryption else None
        self.gate = None
        if self.keys is not None:
            gate_ctx = ctx if type(ctx) is zmq.Context else zmq.Context.shadow(ctx.underlying)
            self.gate = CurveGate(gate_ctx, set(self.keys.allowed))

    def bind(self, sock: zmq.Socket, name: str) -> str:
        if self.internal.transport == "ipc":
            return bind(sock, f"ipc://{self.ipc_dir}/{name}")
        if self.keys is not None:
            curve_server(sock, CurveKeyPair(self.keys.public, self.keys.secret))
        host = self.internal.host
        if ":" in host:  # an IPv6 address
            sock.ipv6 = True
        return bind(sock, f"tcp://{url_host(host)}:0")

    def connect(self, sock: zmq.Socket, endpoint: str, server_public: bytes) -> None:
        """Connect to a deployment peer; over encrypted TCP as a CURVE client of `server_public`.

        The peer's key is admitted on our own listener too: a peer we were told to reach (by our
        launcher, or by a client that passed our gate) may connect back (e.g. a Ray engine actor,
        whose keypair is made on its own node and reaches the API servers with its endpoint).
        """
        if self.keys is not None and endpoint.startswith("tcp://"):
            curve_client(sock, CurveKeyPair(self.keys.public, self.keys.secret), server_public)
            if self.gate is not None:
                self.gate.admit(server_public)
        sock.connect(endpoint)

    @property
    def public(self) -> bytes:
        return self.keys.public if self.keys is not None else b""

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.stop()
