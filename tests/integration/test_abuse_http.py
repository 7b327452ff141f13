"""HTTP-layer abuse (issue 14, findings 2-4) against real servers on loopback: an endless chunked
body, slow-loris and idle connections, header floods, random bytes, stalled TLS handshakes and the
connection cap. Each is refused and closed by its limit while a normal request still succeeds."""
from __future__ import annotations

import os
import resource
import socket
import ssl
import time

import httpx
import pytest

from certs import CertAuthority
from server_process import ServerProcess

HEADER_TIMEOUT = "2"  # --http-header-timeout in these tests (the default is 10 s)


@pytest.fixture(scope="module", autouse=True)
def many_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture(scope="module")
def server():
    proc = ServerProcess("--http-header-timeout", HEADER_TIMEOUT)
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = CertAuthority(tmp_path_factory.mktemp("pki"))
    return ca, ca.issue("server")


@pytest.fixture(scope="module")
def capped(pki):
    """TLS, three connections at most."""
    ca, issued = pki
    proc = ServerProcess("--http-header-timeout", HEADER_TIMEOUT, "--max-connections", "3",
                         "--ssl-keyfile", str(issued.key), "--ssl-certfile", str(issued.cert),
                         http={"verify": ssl.create_default_context(cafile=str(ca.path))})
    yield proc
    proc.kill()


def address(proc: ServerProcess) -> tuple[str, int]:
    host, port = proc.url.split("//", 1)[1].rsplit(":", 1)
    return host, int(port)


def healthy(proc: ServerProcess) -> bool:
    return httpx.get(f"{proc.url}/health", timeout=10, **proc.http).status_code == 200


def read_reply(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (or `timeout`); and whether it closed."""
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, False
        except OSError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def is_closed(sock: socket.socket) -> bool:
    """Whether the server closed `sock` (reads and drops anything it sent; never blocks)."""
    sock.setblocking(False)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def status_line(data: bytes) -> bytes:
    return data.split(b"\r\n", 1)[0]


def wait_all_closed(socks: list[socket.socket], timeout: float) -> int:
    """How many of `socks` are still open once all are closed or `timeout` passed."""
    deadline, open_ = time.monotonic() + timeout, list(socks)
    while open_ and time.monotonic() < deadline:
        open_ = [s for s in open_ if not is_closed(s)]
        time.sleep(0.2)
    return len(open_)


def test_endless_chunked_body_gets_413_and_the_connection_closes(server):
    sock = socket.create_connection(address(server))
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"100000\r\n" + b"a" * 2**20 + b"\r\n"
    sent, reply, closed = 0, b"", False
    sock.settimeout(1.0)
    while sent < 100 * 2**20 and not closed:
        try:
            sock.sendall(chunk)
            sent += 2**20
        except socket.timeout:
            break  # the server stopped reading
        except OSError:
            closed = True
    more, closed = read_reply(sock)
    reply += more
    sock.close()
    assert status_line(reply) == b"HTTP/1.1 413 Request Entity Too Large", reply[:200]
    assert b"connection: close" in reply.lower()
    assert closed
    assert sent < 16 * 2**20  # the default limit is 4 MiB; the rest is the kernel's buffers
    assert healthy(server)


def test_a_body_sent_to_a_refused_route_is_not_read_either(server):
    sock = socket.create_connection(address(server))
    sock.sendall(b"POST /v1/nowhere HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n"
                 + b"a" * 65536)
    reply, closed = read_reply(sock)
    sock.close()
    assert b"connection: close" in reply.lower() and closed, reply[:300]


@pytest.mark.parametrize("head", [
    b"".join(b"X-h%d: v\r\n" % i for i in range(10_000)),
    b"".join(b"X-h%d: v\r\n" % i for i in range(20_000)),
    b"X-big: " + b"a" * 200_000 + b"\r\n",
], ids=["10k-headers", "20k-headers", "200KB-header"])
def test_header_floods_get_431_however_they_arrive(server, head):
    sock = socket.create_connection(address(server))
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + head + b"\r\n")
    reply, closed = read_reply(sock)
    sock.close()
    assert status_line(reply) == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert closed


def test_a_large_but_normal_head_in_small_writes_is_served(server):
    sock = socket.create_connection(address(server))
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + b"t" * 8000 + b"\r\n" \
        + b"".join(b"X-h%d: v\r\n" % i for i in range(200)) + b"Connection: close\r\n\r\n"
    for i in range(0, len(head), 100):
        sock.sendall(head[i:i + 100])
    reply, _ = read_reply(sock)
    sock.close()
    assert status_line(reply) == b"HTTP/1.1 200 OK"


def test_random_bytes_get_400_and_a_close(server):
    socks = [socket.create_connection(address(server)) for _ in range(50)]
    for sock in socks:
        sock.sendall(b"\x7f" + os.urandom(63))  # \x7f: never a token character, as random bytes rarely are
    for sock in socks:
        reply, closed = read_reply(sock)
        assert status_line(reply) == b"HTTP/1.1 400 Bad Request" and closed
        sock.close()


def test_slow_loris_and_idle_connections_are_closed_by_the_deadline(server):
    slow = [socket.create_connection(address(server)) for _ in range(300)]
    idle = [socket.create_connection(address(server)) for _ in range(2000)]
    try:
        for sock in slow:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        assert healthy(server)  # a normal request meanwhile
        for _ in range(4):  # a header byte every 0.5 s: never a whole head
            time.sleep(0.5)
            for sock in slow:
                try:
                    sock.send(b"X")
                except OSError:
                    pass
        assert healthy(server)
        assert wait_all_closed(slow, 10.0) == 0
        assert wait_all_closed(idle, 10.0) == 0
        assert healthy(server)
    finally:
        for sock in slow + idle:
            sock.close()


def test_a_kept_alive_connection_must_send_its_next_head_in_time(server):
    sock = socket.create_connection(address(server))
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    reply, closed = read_reply(sock, timeout=1.0)
    assert status_line(reply) == b"HTTP/1.1 200 OK" and not closed
    sock.sendall(b"GET /health HTTP/1.1\r\n")
    for _ in range(8):
        time.sleep(0.5)
        try:
            sock.send(b"X")
        except OSError:
            break
    reply, closed = read_reply(sock)
    sock.close()
    assert status_line(reply) == b"HTTP/1.1 408 Request Timeout" and closed


def test_a_stalled_tls_handshake_is_closed_by_the_deadline(capped):
    stalled = [socket.create_connection(address(capped)) for _ in range(20)]
    for sock in stalled[10:]:
        sock.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello that stops
    try:
        assert healthy(capped)
        assert wait_all_closed(stalled, 10.0) == 0
    finally:
        for sock in stalled:
            sock.close()


def test_the_connection_over_the_cap_is_refused_and_a_later_one_served(capped, pki):
    ca, _ = pki
    context = ssl.create_default_context(cafile=str(ca.path))
    host, port = address(capped)

    def tls_connection() -> ssl.SSLSocket:
        return context.wrap_socket(socket.create_connection((host, port)), server_hostname=host)

    held = [tls_connection() for _ in range(3)]
    try:
        over = tls_connection()
        reply, closed = read_reply(over)
        over.close()
        assert status_line(reply) == b"HTTP/1.1 503 Service Unavailable" and closed
        assert b"connection: close" in reply.lower() and b"retry-after" in reply.lower()
    finally:
        for sock in held:
            sock.close()
    deadline = time.monotonic() + 10
    while True:  # the server notices the closes in its own time
        try:
            if healthy(capped):
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "no connection was served after the held ones closed"
        time.sleep(0.2)
