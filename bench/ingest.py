"""Ingestion through the running service: N adds in batches, a kill -9 in the middle, a restart, every
acknowledged row checked, then the rest added and the added images searched for.

    python bench/ingest.py --model runs/NAME --index-images /tmp/cifar/test --add-images /tmp/cifar/train \\
        --count 10000 --batch 16 --clients 4 --kill-at 5000 --out runs/ingest

1. `sslforge embed` + `sslforge index build --kind flat` of --index-images (skipped when --out has them).
2. `bentoml serve` with SSLFORGE_WRITE_TOKEN; --clients threads POST /add batches of --batch images of
   --add-images (the first --count, sorted), each row's path its relative path (so rows are unique by path).
3. Once --kill-at rows are acknowledged: os.killpg(SIGKILL) of the server and its workers, mid-request.
4. Restart; read the index dir: every acknowledged id holds the path it was acknowledged for, no path twice,
   the in-flight batches (sent, not answered) counted as applied whole or absent. The batches not in the
   index are sent again (what a client that searched for its in-flight images would do).
5. /search k=1 for --probe added images: the hit must be the image's own row (score > 0.999).
6. The same batches through /embed on the same server, for the ratio of add to embed throughput.
Writes OUT/ingest.json and prints a Markdown summary.
"""
from __future__ import annotations

import argparse
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tools/ (shared with the tests)
from tools.process import crash, start_bentoml, wait_ready  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TOKEN = "bench-ingest-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def sslforge(*args: str) -> None:
    cmd = [sys.executable, "-m", "pretrain.cli", *args]
    print("$ sslforge " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, cwd=PROJECT_ROOT)


def start(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen:
    env = {"SSLFORGE_MODEL": str(Path(args.model).resolve()), "SSLFORGE_INDEX": str((args.out / "index").resolve()),
           "SSLFORGE_WRITE_TOKEN": TOKEN, "SSLFORGE_MAX_BATCH_SIZE": str(max(32, args.batch))}
    proc = start_bentoml(env, port, PROJECT_ROOT, log)
    wait_ready(f"http://127.0.0.1:{port}", proc, log)
    return proc


def stop(proc: subprocess.Popen, hard: bool) -> None:
    if hard:
        crash(proc)  # kill -9 of the server and all its workers
        return
    proc.terminate()
    proc.wait(timeout=60)


def send(url: str, route: str, batches: queue.Queue, clients: int, acked: dict, inflight: dict,
         lock: threading.Lock) -> float:
    """POST the queued batches with `clients` threads until the queue is empty or the server is gone (killed);
    returns the wall time. acked[b] = ids once answered; inflight[b] while sent and not answered."""
    killed = threading.Event()

    def worker() -> None:
        with httpx.Client(base_url=url, timeout=120) as http:
            while not killed.is_set():
                try:
                    b, files, meta = batches.get_nowait()
                except queue.Empty:
                    return
                with lock:
                    inflight[b] = True
                try:
                    r = http.post(route, files=[("images", (Path(f).name, Path(f).read_bytes(), "image/jpeg"))
                                                for f in files], data={"meta": json.dumps(meta)} if meta else None,
                                  headers=AUTH)
                except httpx.HTTPError:
                    killed.set()
                    return
                if r.status_code != 200:
                    raise SystemExit(f"{route}: {r.status_code} {r.text[:200]}")
                with lock:
                    inflight.pop(b)
                    acked[b] = r.json().get("ids", [])

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model dir the index is built with")
    p.add_argument("--index-images", type=Path, required=True, help="images indexed before the adds")
    p.add_argument("--add-images", type=Path, required=True, help="images to add (the first --count, sorted)")
    p.add_argument("--count", type=int, default=10_000, help="images to add (default: 10000)")
    p.add_argument("--batch", type=int, default=16, help="images per /add (default: 16)")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients (default: 4)")
    p.add_argument("--kill-at", type=int, default=5000, help="kill -9 the server once this many rows are acked")
    p.add_argument("--probe", type=int, default=200, help="added images searched for at the end (default: 200)")
    p.add_argument("--port", type=int, default=23917)
    p.add_argument("--out", type=Path, default=Path("runs/ingest"))
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.out / "index" / "index.json").is_file():
        sslforge("embed", "--model", args.model, "--images", str(args.index_images), "--out", str(args.out / "emb"),
                 "--quiet")
        sslforge("index", "build", "--embeddings", str(args.out / "emb"), "--out", str(args.out / "index"),
                 "--kind", "flat", "--quiet")
    from retrieval import Index

    base = Index.load(args.out / "index")
    if (args.out / "index" / "changes.log").exists():
        raise SystemExit(f"{args.out}/index holds changes from an earlier run: delete {args.out} and start again")
    first = base.ntotal
    exts = {".jpg", ".jpeg", ".png"}
    files = sorted(f for f in args.add_images.rglob("*") if f.suffix.lower() in exts)[:args.count]
    rel = [f.relative_to(args.add_images).as_posix() for f in files]
    batches = [(b, [str(f) for f in files[i:i + args.batch]], [{"path": "added/" + r, "label": r.split("/")[0]}
                                                               for r in rel[i:i + args.batch]])
               for b, i in enumerate(range(0, len(files), args.batch))]
    log, url = args.out / "bentoml.log", f"http://127.0.0.1:{args.port}"
    acked, inflight, lock = {}, {}, threading.Lock()
    todo: queue.Queue = queue.Queue()
    for item in batches:
        todo.put(item)

    proc = start(args, args.port, log)
    killer_done = threading.Event()

    def killer() -> None:
        while not killer_done.is_set():
            with lock:
                rows = sum(len(v) for v in acked.values())
            if rows >= args.kill_at:
                stop(proc, hard=True)
                return
            time.sleep(0.01)

    kt = threading.Thread(target=killer)
    kt.start()
    t1 = send(url, "/add", todo, args.clients, acked, inflight, lock)
    killer_done.set()
    kt.join()
    stop(proc, hard=True)
    phase1_rows = sum(len(v) for v in acked.values())
    print(f"killed after {phase1_rows} acknowledged rows ({len(inflight)} batches in flight)", flush=True)

    index = Index.load(args.out / "index")
    where = {p: i for i, p in enumerate(index.paths)}
    lost = [(b, i) for b, ids in acked.items() for i, m in zip(ids, batches[b][2]) if index.paths[i] != m["path"]]
    twice = index.ntotal - len(where)
    applied_unacked = [b for b in inflight if all(m["path"] in where for m in batches[b][2])]
    partial = [b for b in inflight if 0 < sum(m["path"] in where for m in batches[b][2]) < len(batches[b][2])]
    check = {"acknowledged_rows": phase1_rows, "acknowledged_missing": len(lost), "paths_twice": twice,
             "inflight_batches": len(inflight), "inflight_applied_whole": len(applied_unacked),
             "inflight_partial": len(partial), "rows_after_restart": index.ntotal}
    print(json.dumps(check), flush=True)

    resend: queue.Queue = queue.Queue()
    left = [item for item in batches if item[0] not in acked and item[0] not in applied_unacked]
    for item in left:
        resend.put(item)
    proc = start(args, args.port, log)
    inflight_at_kill = dict(inflight)
    try:
        inflight.clear()
        t2 = send(url, "/add", resend, args.clients, acked, inflight, lock)
        index = Index.load(args.out / "index")
        added_paths = {m["path"] for _, _, meta in batches for m in meta}
        have = [p for p in index.paths[first:] if p in added_paths]
        step = max(1, len(files) // args.probe)
        found = 0
        with httpx.Client(base_url=url, timeout=120) as http:
            probes = list(range(0, len(files), step))[:args.probe]
            for j in probes:
                r = http.post("/search", files={"image": (files[j].name, files[j].read_bytes(), "image/jpeg")},
                              data={"k": "1"}).json()["results"]
                found += bool(r) and r[0]["path"] == "added/" + rel[j] and r[0]["score"] > 0.999
        embed_q: queue.Queue = queue.Queue()
        for b, fs, _ in batches[:len(batches) // 2]:
            embed_q.put((b, fs, None))
        te = send(url, "/embed", embed_q, args.clients, {}, {}, lock)
        embed_rows = sum(len(fs) for _, fs, _ in batches[:len(batches) // 2])
    finally:
        stop(proc, hard=False)
    resent_rows = sum(len(item[1]) for item in left)
    absent = len(inflight_at_kill) - len(applied_unacked) - len(partial)
    result = {**check, "added_total": len(have), "unique_added": len(set(have)), "expected": len(files),
              "phase1_rows_per_s": phase1_rows / t1, "phase2_rows_per_s": resent_rows / t2,
              "embed_rows_per_s": embed_rows / te, "probe_found": found, "probes": len(probes),
              "batch": args.batch, "clients": args.clients,
              "log_bytes": (args.out / "index" / "changes.log").stat().st_size}
    (args.out / "ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"""
| what | value |
|---|---|
| rows acknowledged before the kill -9 | {phase1_rows:,} |
| acknowledged rows missing after the restart | {len(lost)} |
| rows present twice | {twice} |
| batches in flight at the kill: applied whole / absent / partial | {len(applied_unacked)} / {absent} / {len(partial)} |
| added rows in the index at the end (expected {len(files):,}) | {len(have):,} ({len(set(have)):,} unique) |
| added images found by /search as their own row (k=1) | {found} / {len(probes)} |
| /add throughput, before the kill / after the restart | {phase1_rows / t1:.1f} / {resent_rows / t2:.1f} images/s |
| /embed throughput of the same batches (no write) | {embed_rows / te:.1f} images/s |
| change log | {result['log_bytes'] / 2**20:.1f} MiB |
""")


if __name__ == "__main__":
    main()
