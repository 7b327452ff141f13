"""The grammar check worker: `python -m bastion.structured.check_worker`, a child of an API server.

It compiles a request's constraint for real (`LLMatcher.validate_grammar`) in a process the API
server can kill when the compile runs past `--structured-output-compile-timeout` (llguidance
offers no cancellation, and a compile holds its thread until it ends).

The wire: length-prefixed msgpack frames (msgspec, tagged types, no pickle) on stdin/stdout.
The first frame is a `WorkerSetup` (the tokenizer as llguidance's JSON text, the logits width,
the EOS ids, the memory cap); the worker answers `WorkerReady`, then one `CheckVerdict` per
`CheckRequest`. What the worker gets is only that: no model path, no config, no secret (its
environment is a short allowlist, see `server/grammar_check.py`). It caps its own address space
(`RLIMIT_AS`) once its tokenizer is built, and dies with its parent (`PR_SET_PDEATHSIG`, and EOF
on stdin). Its stdout is re-pointed at stderr, so a stray print cannot corrupt a frame.
"""
from __future__ import annotations

import ctypes
import os
import resource
import signal
import struct
import sys
from typing import BinaryIO, Union

import msgspec

from bastion.structured.spec import StructuredOutputs

_LEN = struct.Struct(">I")
MAX_FRAME = 512 * 2**20  # the setup frame carries a whole tokenizer (tens of MB for large vocabularies)


class WorkerSetup(msgspec.Struct, tag="setup"):
    """The worker's one-time configuration: the vocabulary grammars are compiled against."""

    tokenizer_json: str  # the HF tokenizer as `tokenizers` serializes it (what llguidance reads)
    vocab_size: int  # the width of the model's logits
    eos_token_ids: list[int]
    memory_headroom_bytes: int  # address space allowed beyond what building the tokenizer took
    strict_properties: bool = True  # --structured-output-strict-properties (grammar_text's)


class WorkerReady(msgspec.Struct, tag="ready"):
    error: str = ""  # non-empty: the tokenizer could not be built


class CheckRequest(msgspec.Struct, tag="check"):
    spec: StructuredOutputs


class CheckVerdict(msgspec.Struct, tag="verdict"):
    error: str = ""  # empty: the constraint compiles; else why it does not


ToWorker = Union[WorkerSetup, CheckRequest]
FromWorker = Union[WorkerReady, CheckVerdict]
_encoder = msgspec.msgpack.Encoder()


def encode_frame(message: msgspec.Struct) -> bytes:
    """One frame: a 4-byte big-endian length, then the msgpack payload."""
    payload = _encoder.encode(message)
    return _LEN.pack(len(payload)) + payload


def frame_size(head: bytes) -> int:
    """The payload length a frame's 4-byte head announces; a ValueError past `MAX_FRAME`."""
    (size,) = _LEN.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"frame of {size} bytes is over the {MAX_FRAME}-byte limit")
    return size


def verdict(spec: StructuredOutputs, tokenizer, limits, strict_properties: bool = True) -> str:
    """Why `spec` does not compile against `tokenizer` ("" when it does): a malformed constraint,
    our own checks (`schema_checks`), then llguidance's real compile. `strict_properties`: as
    `StructuredOutputs.grammar_text`, the engines' reading of JSON schemas."""
    from llguidance import LLMatcher

    from bastion.structured.schema_checks import check_spec
    try:
        grammar = spec.grammar_text(strict_properties)
        check_spec(spec)
    except ValueError as exc:  # GrammarError, and llguidance's own (a number it cannot carry)
        return str(exc) or type(exc).__name__
    except RecursionError:
        return "the constraint is nested too deeply to read"
    return LLMatcher.validate_grammar(grammar, tokenizer, limits=limits)


def _die_with_parent() -> None:
    """SIGKILL when the API server dies (Linux), even mid-compile; else EOF on stdin ends us."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(0)


def _cap_memory(headroom: int) -> None:
    """Cap the address space at what the process uses now plus `headroom`."""
    with open("/proc/self/statm") as statm:
        used = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = used + headroom
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def _read(stream: BinaryIO, decoder: msgspec.msgpack.Decoder):
    head = stream.read(_LEN.size)
    if len(head) < _LEN.size:
        return None
    size = frame_size(head)
    payload = stream.read(size)
    if len(payload) < size:
        return None
    return decoder.decode(payload)


def serve(stdin: BinaryIO, out_fd: int) -> None:
    """Answer frames until EOF: the setup first, then one verdict per request."""
    from llguidance import LLParserLimits, LLTokenizer

    decoder = msgspec.msgpack.Decoder(ToWorker)

    def send(message: msgspec.Struct) -> None:
        data = encode_frame(message)
        while data:
            data = data[os.write(out_fd, data):]

    setup = _read(stdin, decoder)
    if not isinstance(setup, WorkerSetup):
        return
    try:
        eos = [t for t in setup.eos_token_ids if 0 <= t < setup.vocab_size] or None
        tokenizer = LLTokenizer(setup.tokenizer_json, n_vocab=setup.vocab_size, eos_token=eos)
    except Exception as exc:  # llguidance's own errors: reported, then this worker ends
        send(WorkerReady(f"cannot build the grammar tokenizer: {exc}"))
        return
    headroom, strict, setup = setup.memory_headroom_bytes, setup.strict_properties, None  # the JSON text is no longer needed
    _cap_memory(headroom)
    limits = LLParserLimits(verbose_errors=False)
    send(WorkerReady())
    while (request := _read(stdin, decoder)) is not None:
        if isinstance(request, CheckRequest):
            try:
                error = verdict(request.spec, tokenizer, limits, strict)
            except MemoryError:
                error = "the grammar needs more memory than this server allows a check"
            send(CheckVerdict(error))


def main() -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the server; it ends us
    out_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, out_fd)


if __name__ == "__main__":
    main()
