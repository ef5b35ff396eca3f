"""The hostile-input corpus (hostile.py) and slow clients against the session's real `bentoml serve` (conftest).

Across the corpus: every case gets the status it names (no 500), no answer carries a traceback, the server answers a
valid request after each case, no URL is ever fetched, and each server process's peak RSS stays within
RSS_GROWTH of what it was before.
"""
from __future__ import annotations

import json
import socket
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest
from hostile import Case, corpus, pending, raw_request
from serve_helpers import MAX_BYTES, free_port, png_bytes

from serve.settings import Limits

RSS_GROWTH = 150 * 2**20  # bytes a server process's peak RSS may grow by across the whole corpus


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
    content = iter([case.body[i:i + 2**20] for i in range(0, len(case.body), 2**20)]) if case.chunked else case.body
    r = client.request(case.method, case.route, content=content, headers=headers)
    return r.status_code, r.content


def server_processes(proc) -> list[psutil.Process]:
    root = psutil.Process(proc.pid)
    return [root, *root.children(recursive=True)]


def reset_peak_rss(p: psutil.Process) -> bool:
    """Restart the kernel's peak-RSS count (VmHWM) of `p`; False where /proc does not allow it."""
    try:
        Path(f"/proc/{p.pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss(p: psutil.Process) -> int:
    status = Path(f"/proc/{p.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def check(case: Case, status: int, body: bytes) -> list[str]:
    problems = [] if status == case.status else [f"status {status}, expected {case.status}"]
    if b"Traceback" in body:
        problems.append("a traceback in the answer")
    if case.json_error and status >= 400:
        try:
            error = json.loads(body)["error"]
            if not isinstance(error, str) or "\n" in error or not error:
                problems.append("the error is not one line")
        except (ValueError, KeyError, TypeError):
            problems.append("the answer is not {\"error\": ...}")
    return problems


def test_the_hostile_corpus(live_server, served, trap):
    image = png_bytes(32)
    cases = corpus(image, MAX_BYTES, Limits.max_images, f"http://127.0.0.1:{trap.getsockname()[1]}/a.jpg")
    query = sorted(served[2].rglob("*.jpg"))[0].read_bytes()
    processes = server_processes(live_server.proc)
    before = {p.pid: p.memory_info().rss for p in processes}
    assert all(reset_peak_rss(p) for p in processes), "cannot reset the peak RSS count in /proc"
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
    peaks = {p.pid: peak_rss(p) for p in processes}
    growth = {p.pid: peaks[p.pid] - before[p.pid] for p in processes}
    print(f"\ncorpus: {len(cases)} cases, statuses {dict(sorted(statuses.items()))}; server processes' RSS before -> "
          f"peak (MB): " + ", ".join(f"{before[p] / 2**20:.0f} -> {peaks[p] / 2**20:.0f}" for p in before))
    assert statuses[500] == 0 and not failures, "\n".join(failures)
    with pytest.raises(BlockingIOError):
        trap.accept()  # nobody connected: no URL was fetched
    assert max(growth.values()) <= RSS_GROWTH, f"peak RSS grew by {max(growth.values()) / 2**20:.0f} MB"


@pytest.mark.skip(reason="needs the preprocessing fix (thin images): then move hostile.pending()'s cases into corpus()")
@pytest.mark.parametrize("name", list(pending()))
def test_pending_cases(live_server, name):
    case = pending()[name]
    with httpx.Client(base_url=live_server.url, timeout=60) as client:
        status, body = send(client, live_server.port, case)
    assert not check(case, status, body)


def test_raw_requests_reach_the_server(live_server):
    status, _ = send_raw(live_server.port, raw_request(b"GET /livez HTTP/1.1\nHost: x\nConnection: close\n"))
    assert status == 200
