"""Against the session's real `bentoml serve` (conftest): the API worker's memory stays bounded however many huge
images a request uploads (docs/security.md states the bound), and no process of the tree listens on a TCP port
other than the HTTP port (circus's control sockets are private Unix sockets)."""
from __future__ import annotations

import os
import socket
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hostile
import httpx
import pytest
from serve_helpers import RSS_BOUND, peak_rss, reset_peak_rss, server_processes, tcp_listening

SIDE = 6000  # 36 M pixels: under the per-image limit; 8 of them under the per-request limit, 64 far over


@pytest.fixture(scope="module")
def zero_png() -> bytes:
    return hostile.zero_png(SIDE)


def embed(url: str, png: bytes, n: int) -> httpx.Response:
    files = [("images", (f"zero-{i}.png", png, "image/png")) for i in range(n)]
    return httpx.post(f"{url}/embed", files=files, timeout=300)


def test_memory_per_request_is_bounded(live_server, zero_png):
    """8 and 64 all-zero 6000x6000 PNGs in one /embed request, then 4 such requests of 8 at once: the API worker
    decodes one image at a time within its pixel budget, and a request over the per-request pixels is refused
    from the headers alone."""
    processes = server_processes(live_server.proc)
    api = processes["sslforge"]
    assert all(reset_peak_rss(p) for p in processes.values()), "cannot reset the peak RSS count in /proc"
    before = {name: p.memory_info().rss for name, p in processes.items()}
    r = embed(live_server.url, zero_png, 8)
    assert r.status_code == 200 and len(r.json()["embeddings"]) == 8, r.text[:200]
    r = embed(live_server.url, zero_png, 64)
    assert r.status_code == 413 and "per request" in r.json()["error"], r.text[:200]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: embed(live_server.url, zero_png, 8), range(4)))
    assert [a.status_code for a in answers] == [200] * 4
    growth = {name: peak_rss(p) - before[name] for name, p in processes.items()}
    print("\npeak RSS growth (MB): " + ", ".join(f"{n} {g / 2**20:.0f}" for n, g in growth.items()) +
          f"; bound {RSS_BOUND / 2**20:.0f}")
    assert growth["sslforge"] <= RSS_BOUND, growth
    assert max(growth.values()) <= RSS_BOUND, growth
    assert api.is_running()


def test_no_control_port_on_tcp(live_server):
    """Every TCP port the server's process tree listens on is the HTTP port; circus's control and event sockets
    are Unix sockets in a folder only the service's user may enter."""
    processes = server_processes(live_server.proc)
    ports = tcp_listening(processes)
    assert ports and all(port == live_server.port for _, port in ports), ports
    unix = [c.laddr for c in processes["bentoml serve"].net_connections(kind="unix") if "sslforge-circus-" in c.laddr]
    assert unix, "the arbiter's endpoints are not the private Unix sockets"
    folder = Path(unix[0]).parent
    mode = folder.stat()
    assert stat.S_IMODE(mode.st_mode) == 0o700 and mode.st_uid == os.getuid()
    with socket.create_connection(("127.0.0.1", live_server.port), timeout=5) as s:  # the HTTP port still answers
        s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 200")
