"""Throughput and latency of the BentoML service with adaptive batching on vs off, under concurrent load.

    python bench/serve_load.py --model runs/quickstart --index runs/quickstart-retrieval/index \\
        --clients 32 --requests 20 --rounds 3

Starts two `bentoml serve` processes on loopback, one with batching and one without (the same code,
SSLFORGE_BATCHING=1 / 0), then alternates load rounds between them so both see the same machine
load. Each round: `clients` concurrent clients (one shared async HTTP client, so requests really
overlap) each send `requests` POST /search uploads one after another. Prints requests/s, p50/p99
latency and the mean batch the encoder ran (from /metrics), per round and as medians.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from retrieval import Index
from serve.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tools/ (shared with the tests)
from tools.process import start_bentoml, wait_ready  # noqa: E402

SEARCH_K = "5"
PROJECT_ROOT = Path(__file__).resolve().parents[1]  # bentoml serve reads its bentofile.yaml


def batch_stats(url: str) -> tuple[float, float]:
    """(sum, count) of the encoder's adaptive batch sizes so far."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    def total(name: str) -> float:  # noqa: E306
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))
    return total("bentoml_service_adaptive_batch_size_sum"), total("bentoml_service_adaptive_batch_size_count")


async def load(url: str, images: list[bytes], clients: int, requests: int) -> tuple[list[float], int, float]:
    """Latencies of the successful requests, the number of failures, and the wall time."""
    latencies: list[float] = []
    failures = 0

    async def client(i: int, http: httpx.AsyncClient) -> None:
        nonlocal failures
        for j in range(requests):
            start = time.perf_counter()
            try:
                r = await http.post("/search", data={"k": SEARCH_K},
                                    files={"image": ("q.png", images[(i * requests + j) % len(images)])})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            if ok:
                latencies.append(time.perf_counter() - start)
            else:
                failures += 1

    async with httpx.AsyncClient(base_url=url, timeout=300, limits=httpx.Limits(max_connections=clients)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(i, http) for i in range(clients)))
        return latencies, failures, time.perf_counter() - start


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="runs/quickstart", help="model dir (default: runs/quickstart)")
    ap.add_argument("--index", default="runs/quickstart-retrieval/index", help="index dir")
    ap.add_argument("--backend", default="torch", choices=("torch", "onnx"), help="embedding runtime")
    ap.add_argument("--clients", type=int, default=32, help="concurrent clients (default: 32)")
    ap.add_argument("--requests", type=int, default=20, help="requests per client per round (default: 20)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per setting, alternating (default: 3)")
    ap.add_argument("--max-batch-size", type=int, default=32, help="adaptive batching: largest batch")
    ap.add_argument("--ports", default="23001,23002", help="loopback ports for the on and off servers")
    args = ap.parse_args()

    index = Index.load(args.index)
    root = Path(index.info.get("root", ""))
    images = [(root / p).read_bytes() for p in index.paths[:: max(1, len(index.paths) // 200)][:200]]
    base = {"model": str(Path(args.model).resolve()), "index": str(Path(args.index).resolve()),
            "backend": args.backend, "max_batch_size": args.max_batch_size}
    ports = [int(p) for p in args.ports.split(",")]
    setups = {"batching on": Settings(**base, batching=True), "batching off": Settings(**base, batching=False)}
    logs = Path(tempfile.mkdtemp(prefix="serve-load-"))
    procs, urls = {}, {}
    try:
        log = {name: logs / f"{name.replace(' ', '-')}.log" for name in setups}
        for (name, settings), port in zip(setups.items(), ports):
            procs[name] = start_bentoml(settings.env(), port, PROJECT_ROOT, log[name])
            urls[name] = f"http://127.0.0.1:{port}"
        for name in setups:
            wait_ready(urls[name], procs[name], log[name], timeout=300)
            asyncio.run(load(urls[name], images, 4, 2))  # warm up
        print(f"{args.clients} clients x {args.requests} POST /search (k={SEARCH_K}) per round; model {args.model} "
              f"({args.backend}), index of {len(index):,}; max batch {args.max_batch_size}")
        results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in setups}
        for r in range(args.rounds):
            for name in setups:
                before = batch_stats(urls[name])
                lat, failed, wall = asyncio.run(load(urls[name], images, args.clients, args.requests))
                after = batch_stats(urls[name])
                batches = after[1] - before[1]
                mean_batch = (after[0] - before[0]) / batches if batches else 1.0
                row = (len(lat) / wall, percentile(lat, 0.5) * 1e3, percentile(lat, 0.99) * 1e3, mean_batch)
                results[name].append(row)
                print(f"round {r + 1} {name:>12}: {row[0]:6.1f} req/s  p50 {row[1]:6.0f} ms  p99 {row[2]:6.0f} ms  "
                      f"mean batch {row[3]:4.1f}  failed {failed}", flush=True)
        print("\nmedians over rounds:")
        med = {name: [statistics.median(col) for col in zip(*rows)] for name, rows in results.items()}
        for name, (rps, p50, p99, mb) in med.items():
            print(f"  {name:>12}: {rps:6.1f} req/s  p50 {p50:6.0f} ms  p99 {p99:6.0f} ms  mean batch {mb:4.1f}")
        on, off = med["batching on"], med["batching off"]
        print(f"  on / off: throughput x{on[0] / off[0]:.2f}, p50 x{on[1] / off[1]:.2f}, p99 x{on[2] / off[2]:.2f}")
        print(f"server logs: {logs}")
    finally:
        for proc in procs.values():
            proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
