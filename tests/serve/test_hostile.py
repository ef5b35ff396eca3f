"""The hostile-input corpus (hostile.py) and slow clients against the session's real `bentoml serve`s (conftest).

Across the corpus (on the writable server, so the write routes' cases reach their field checks): every case gets
the status it names (no 500), no answer carries a traceback, the server answers a valid request after each case,
no URL is ever fetched, and each server process's peak RSS stays within what docs/security.md states: the API
worker's within RSS_BOUND (it decodes huge images), the others' within RSS_GROWTH. Slow clients (nothing sent,
trickled headers, trickled body, more slow connections than the cap) are cut off by the header and body timeouts
and the cap of SERVER_ENV.
"""
from __future__ import annotations

import json
import select
import socket
import time
from collections import Counter

import httpx
import pytest
from hostile import MULTIPART, Case, corpus, form, raw_request, zero_png
from serve_helpers import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    MAX_BYTES,
    MAX_PENDING,
    RSS_BOUND,
    TOKEN,
    free_port,
    peak_rss,
    png_bytes,
    reset_peak_rss,
    server_processes,
)

from serve.settings import Limits

RSS_GROWTH = 64 * 2**20  # bytes a server process's peak RSS may grow by across the whole corpus (measured: <= 25 MB)
SLACK = 2.5  # seconds a timeout may be late on a busy 2-core machine


@pytest.fixture(scope="module")
def trap():
    """A listening socket that the corpus's URLs point at: a fetch by the server would show up as a connection."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", free_port()))
        s.listen(8)
        s.setblocking(False)
        yield s


def send_raw(port: int, data: bytes, timeout: float = 10) -> tuple[int, bytes]:
    """Bytes on a fresh connection; (status, whole answer) once the server closes (status 0: no HTTP answer)."""
    chunks = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:  # reset or timed out: keep what came
            pass
    answer = b"".join(chunks)
    return (int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0), answer


def send(client: httpx.Client, port: int, case: Case) -> tuple[int, bytes]:
    if case.raw is not None:
        status, answer = send_raw(port, case.raw)
        return status, answer.partition(b"\r\n\r\n")[2]
    headers = {"content-type": case.content_type} if case.content_type else {}
    headers.update(case.headers)
    content = iter([case.body[i:i + 2**20] for i in range(0, len(case.body), 2**20)]) if case.chunked else case.body
    r = client.request(case.method, case.route, content=content, headers=headers)
    return r.status_code, r.content


def check(case: Case, status: int, body: bytes) -> list[str]:
    problems = [] if status == case.status else [f"status {status}, expected {case.status}"]
    if b"Traceback" in body:
        problems.append("a traceback in the answer")
    problems += [f"the answer shows {hidden!r}" for hidden in case.hides if hidden.encode() in body]
    if case.json_error and status >= 400:
        try:
            error = json.loads(body)["error"]
            if not isinstance(error, str) or "\n" in error or not error:
                problems.append("the error is not one line")
        except (ValueError, KeyError, TypeError):
            problems.append("the answer is not {\"error\": ...}")
    return problems


def test_the_hostile_corpus(writable_server, served, trap):
    live_server, index = writable_server
    image = png_bytes(32)
    cases = corpus(image, MAX_BYTES, Limits.max_images, f"http://127.0.0.1:{trap.getsockname()[1]}/a.jpg",
                   TOKEN, zero_png())
    query = sorted(served[2].rglob("*.jpg"))[0].read_bytes()
    rows = (index / "ids.jsonl").read_bytes(), (index / "changes.log").read_bytes() if (
        index / "changes.log").exists() else b""
    processes = server_processes(live_server.proc)
    before = {name: p.memory_info().rss for name, p in processes.items()}
    assert all(reset_peak_rss(p) for p in processes.values()), "cannot reset the peak RSS count in /proc"
    statuses, failures = Counter(), []
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        for name, case in cases.items():
            status, body = send(client, live_server.port, case)
            statuses[status] += 1
            problems = check(case, status, body)
            after = client.post("/search", files={"image": ("q.jpg", query, "image/jpeg")}, data={"k": "2"})
            if after.status_code != 200:
                problems.append(f"the next valid request got {after.status_code}")
            if problems:
                failures.append(f"{name}: {'; '.join(problems)}: {body[:160]!r}")
    peaks = {name: peak_rss(p) for name, p in processes.items()}
    growth = {name: peaks[name] - before[name] for name in processes}
    print(f"\ncorpus: {len(cases)} cases, statuses {dict(sorted(statuses.items()))}; RSS before -> peak (MB): " +
          ", ".join(f"{name} {before[name] / 2**20:.0f} -> {peaks[name] / 2**20:.0f}" for name in processes))
    assert statuses[500] == 0 and not failures, "\n".join(failures)
    with pytest.raises(BlockingIOError):
        trap.accept()  # nobody connected: no URL was fetched
    assert growth.pop("sslforge") <= RSS_BOUND and max(growth.values()) <= RSS_GROWTH, f"peak RSS grew by {growth}"
    assert rows == ((index / "ids.jsonl").read_bytes(), (index / "changes.log").read_bytes() if (
        index / "changes.log").exists() else b"")  # every write was refused: nothing stored


def read_until_closed(s: socket.socket, limit: float, trickle: bytes = b"") -> tuple[float, bytes]:
    """Wait (sending one byte of `trickle` every 0.5 s) until the server closes `s`; (seconds, what it sent)."""
    start, answer = time.monotonic(), b""
    while time.monotonic() - start < limit:
        if select.select([s], [], [], 0.5)[0]:
            try:
                chunk = s.recv(65536)
            except OSError:
                break
            if not chunk:
                break
            answer += chunk
        elif trickle:
            try:
                s.send(trickle[:1])
            except OSError:
                break
            trickle = trickle[1:] or trickle
    return time.monotonic() - start, answer


@pytest.mark.parametrize(("sent", "trickle", "timeout"), [
    (b"", b"", HEADER_TIMEOUT),
    (b"POST /search HTTP/1.1\r\nHost: x\r\nX-Slow: ", b"abcdefgh", HEADER_TIMEOUT),
    (b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: " + MULTIPART.encode() + b"\r\nContent-Length: 100000\r\n\r\n",
     form(b"x" * 100), BODY_TIMEOUT),
], ids=["nothing sent", "trickled headers", "trickled body"])
def test_slow_clients_are_cut_off(live_server, sent, trickle, timeout):
    with socket.create_connection(("127.0.0.1", live_server.port)) as s:
        s.sendall(sent)
        seconds, answer = read_until_closed(s, timeout + 10, trickle)
    assert timeout - 0.5 <= seconds <= timeout + SLACK, f"closed after {seconds:.1f} s (timeout {timeout} s)"
    assert answer.startswith(b"HTTP/1.1 408 ") and b'"error"' in answer, answer


def test_slow_connections_over_the_cap_are_closed_oldest_first(live_server, served):
    """More slow connections than the cap: the oldest are closed at once, and a valid request still gets through."""
    extra = 5
    slow = [socket.create_connection(("127.0.0.1", live_server.port)) for _ in range(MAX_PENDING + extra)]
    try:
        for s in slow:
            s.sendall(b"GET /livez HTTP/1.1\r\nHost: x\r\n")  # headers never finished
            time.sleep(0.01)
        time.sleep(0.5)
        query = sorted(served[2].rglob("*.jpg"))[0].read_bytes()
        r = httpx.post(f"{live_server.url}/search", files={"image": ("q.jpg", query, "image/jpeg")}, timeout=10)
        assert r.status_code == 200
        ready = select.select(slow, [], [], 0.5)[0]  # answered (408) or closed by the server
        closed = sorted(i for i, s in enumerate(slow) if s in ready)
        assert closed[:extra] == list(range(extra)), closed
        assert all(slow[i].recv(65536).startswith(b"HTTP/1.1 408 ") for i in closed[:extra])
    finally:
        for s in slow:
            s.close()


def test_raw_requests_reach_the_server(live_server):
    status, _ = send_raw(live_server.port, raw_request(b"GET /livez HTTP/1.1\nHost: x\nConnection: close\n"))
    assert status == 200
