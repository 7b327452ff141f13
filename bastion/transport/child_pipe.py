"""The launcher <-> child wire: length-prefixed msgpack frames over the child's stdin/stdout.

A child's stdin is its spawn and control pipe: the first frame is its spec (its whole
configuration, so no setting or secret ever sits in argv), later frames are control messages.
EOF on stdin means the launcher is gone, and the child exits (no orphans). The child's original
stdout carries only handshake frames; its stdout is re-pointed at stderr so stray prints cannot
corrupt the handshake. No pickle anywhere.
"""
from __future__ import annotations

import logging
import os
import queue
import struct
import threading
from typing import BinaryIO, Callable, Union

import msgspec

from bastion.config.deployment import InternalConfig
from bastion.config.engine import EngineConfig
from bastion.config.security import SecurityConfig
from bastion.config.serve import ServeConfig
from bastion.config.server import ServerConfig
from bastion.transport.channel import ChannelKeys
from bastion.transport.rank_state import RankState

logger = logging.getLogger(__name__)

MAX_CONTROL_FRAME = 16 * 2**20
_LEN = struct.Struct(">I")


class EngineSpec(msgspec.Struct, tag="engine_spec"):
    """Everything an engine child needs: its rank, its config and its private ipc directory."""

    index: int
    config: EngineConfig
    ipc_dir: str
    internal: InternalConfig
    keys: ChannelKeys | None = None  # its CURVE identity on encrypted TCP (secret: spec only)
    device_rank: int | None = None  # the data-parallel rank that picks its GPU (default: index)


class EngineEndpoint(msgspec.Struct):
    """How an API server reaches one engine rank."""

    index: int
    input_endpoint: str
    server_key: bytes = b""  # its CURVE public key on encrypted TCP
    kv_endpoint: str = ""  # a prefill rank's KV listener (disaggregated serving), and
    kv_key: bytes = b""  # its CURVE public key
    kv_role: str = "both"  # prefill | decode | both (--kv-role)

    @classmethod
    def of(cls, ready: "EngineReady") -> "EngineEndpoint":
        """Where a ready engine (its handshake) is reached."""
        return cls(ready.engine_index, ready.input_endpoint, ready.server_key, ready.kv_endpoint, ready.kv_key,
                   ready.kv_role)


class ApiServerSpec(msgspec.Struct, tag="api_spec"):
    """Everything an API-server child needs to start loading while the engines load; its engines
    follow in an `EngineSet` frame. `listen_fd` is the shared socket it inherits."""

    index: int
    server: ServerConfig
    model_path: str
    listen_fd: int
    ipc_dir: str
    metrics_dir: str
    security: SecurityConfig
    internal: InternalConfig
    keys: ChannelKeys | None = None
    limits_dir: str | None = None  # where the shared limits service listens (None: no limits)
    name: str | None = None  # its process name (`rank-1/api-server-0`), in its audit lines


class RankServerSpec(msgspec.Struct, tag="rank_spec"):
    """A supervisor's rank: a whole server (its own launcher, engine and API server) on its port.
    `limits_dir` is the supervisor's limits service, shared by every rank."""

    index: int
    config: ServeConfig
    limits_dir: str | None = None


class EngineSet(msgspec.Struct, tag="engine_set"):
    """Launcher -> API servers, once every engine is ready: where the engines are, and limits."""

    engines: list[EngineEndpoint]
    max_model_len: int
    vocab_size: int


class EngineReady(msgspec.Struct, tag="engine_ready"):
    engine_index: int
    input_endpoint: str
    max_model_len: int
    num_kv_blocks: int
    vocab_size: int
    server_key: bytes = b""
    kv_endpoint: str = ""  # a prefill rank's KV listener, bound on the node's address at port 0
    kv_key: bytes = b""
    kv_role: str = "both"


class ApiServerReady(msgspec.Struct, tag="api_ready"):
    index: int


class ChildFailed(msgspec.Struct, tag="failed"):
    """A child could not start; `message` says why (it never holds a secret)."""

    message: str


class RankDown(msgspec.Struct, tag="rank_down"):
    """Launcher -> API servers: engine rank `index` is gone; fail its requests now.
    `state` is what comes next: restarting, or failed (out of restarts)."""

    index: int
    reason: str
    state: RankState = RankState.RESTARTING
    restarts: int = 0


class RankUp(msgspec.Struct, tag="rank_up"):
    """Launcher -> API servers: restarted engine rank `index` is ready at a new endpoint."""

    index: int
    input_endpoint: str
    server_key: bytes = b""
    restarts: int = 0
    kv_endpoint: str = ""
    kv_key: bytes = b""
    kv_role: str = "both"


ChildSpec = Union[EngineSpec, ApiServerSpec, RankServerSpec]
Handshake = Union[EngineReady, ApiServerReady, ChildFailed]
Control = Union[EngineSet, RankDown, RankUp]

_encoder = msgspec.msgpack.Encoder()
_spec_decoder = msgspec.msgpack.Decoder(ChildSpec)
_handshake_decoder = msgspec.msgpack.Decoder(Handshake)
_control_decoder = msgspec.msgpack.Decoder(Control)


def write_frame(fd: int, message: msgspec.Struct) -> None:
    """Write one frame to a raw file descriptor (blocking, whole frame)."""
    payload = _encoder.encode(message)
    data = _LEN.pack(len(payload)) + payload
    while data:
        data = data[os.write(fd, data):]


def read_frame(stream: BinaryIO) -> bytes | None:
    """Read one frame's payload from a binary stream (raw or buffered); None on EOF."""
    head = _read_exactly(stream, _LEN.size)
    if head is None:
        return None
    (size,) = _LEN.unpack(head)
    if size > MAX_CONTROL_FRAME:
        raise ValueError(f"control frame of {size} bytes is over the {MAX_CONTROL_FRAME}-byte limit")
    return _read_exactly(stream, size)


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def decode_spec(payload: bytes) -> ChildSpec:
    return _spec_decoder.decode(payload)


def decode_handshake(payload: bytes) -> Handshake:
    return _handshake_decoder.decode(payload)


def decode_control(payload: bytes) -> Control:
    return _control_decoder.decode(payload)


def _exit_now() -> None:
    os._exit(1)  # NOTE: the launcher is gone; nothing to drain for (no orphans)


class ControlWatch:
    """Reads control frames in a thread; calls `on_eof` the moment the launcher goes away (by
    default the process exits at once).

    Started first thing in every child, so even a child still loading exits on EOF. Frames that
    arrive before the child sets a handler wait in a queue: `receive` takes them in order, and
    `set_handler` hands over whatever is still queued.
    """

    def __init__(self, stdin: BinaryIO, on_eof: Callable[[], None] = _exit_now) -> None:
        self.stdin = stdin
        self.on_eof = on_eof
        self.handler: Callable | None = None
        self._early: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        threading.Thread(target=self._loop, name="control", daemon=True).start()

    def receive(self, timeout: float | None = None):
        """The next frame that came before a handler was set (blocks; queue.Empty on timeout)."""
        return self._early.get(timeout=timeout)

    def set_handler(self, handler: Callable) -> None:
        with self._lock:
            self.handler = handler
            while not self._early.empty():
                self._deliver(handler, self._early.get_nowait())

    def _loop(self) -> None:
        while True:
            try:
                payload = read_frame(self.stdin)
            except (OSError, ValueError):  # a broken pipe or a bad length: the stream is lost
                payload = None
            if payload is None:
                self.on_eof()
                return
            try:
                message = decode_control(payload)
            except msgspec.DecodeError:
                logger.exception("dropped a malformed control frame")
                continue
            with self._lock:
                if self.handler is None:
                    self._early.put(message)
                else:
                    self._deliver(self.handler, message)

    @staticmethod
    def _deliver(handler: Callable, message) -> None:
        try:
            handler(message)
        except Exception:  # a bad frame must not kill the watch
            logger.exception("ignored a control frame")
