"""The Markdown report of bench/gpu_check.py, from its JSON report (tables a reader compares, then what failed)."""
from __future__ import annotations


def _table(head: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join("" if v is None else str(v) for v in row) + " |" for row in rows]


def _ok(results: list[dict], section: str) -> list[dict]:
    return [r for r in results if r["section"] == section and r["status"] == "ok"]


def _loss(r: dict) -> str:
    return f"{r['loss_first']} -> {r['loss_last']}"


def _training_rows(rows: list[dict]) -> list[list]:
    return [[r["result"]["method"], r["result"]["size"], "gpu" if r["result"]["gpu_augment"] else "cpu",
             "yes" if r["result"]["compile"] else "", r["result"]["images_per_s"], r["result"]["peak_gpu_memory_mb"],
             r["result"]["precision"], _loss(r["result"]), r["result"]["finite"], r["result"]["falling"]]
            for r in rows]


TRAIN_HEAD = ["method", "px", "augment", "compile", "images/s", "peak GPU MB", "precision", "loss first -> last",
              "finite", "falling"]


def versus_lightly(results: list[dict]) -> list[list]:
    ours = {r["name"].removeprefix("sslforge "): r["result"] for r in _ok(results, "versus lightly")
            if r["name"].startswith("sslforge ")}
    theirs = {r["name"].removeprefix("lightly "): r["result"] for r in _ok(results, "versus lightly")
              if r["name"].startswith("lightly ")}
    rows = []
    for label in ours:
        a, b = ours[label], theirs.get(label)
        ratio = f"{a['images_per_s'] / b['images_per_s']:.2f}x" if b and b["images_per_s"] else "n/a"
        rows.append([a["method"], a["size"], a["images_per_s"], b["images_per_s"] if b else "n/a", ratio,
                     _loss(a), _loss(b) if b else "n/a"])
    return rows


def render_markdown(report: dict) -> str:
    results = report["results"]
    out = [f"# GPU check, {report['date']}", "",
           f"device {report['device']}{' (tiny sizes)' if report['tiny'] else ''}; {report['elapsed_s']} s in all; "
           f"sizes {report['sizes']}", "", "## Environment", ""]
    out += _table(["", ""], [[k, v] for k, v in (report["environment"] or {}).items()])
    out += ["", "## sslforge (--gpu-augment, bf16) against lightly 1.6.0 (its recipes, bf16 autocast)", ""]
    out += _table(["method", "px", "sslforge images/s", "lightly images/s", "ratio", "sslforge loss",
                   "lightly loss"], versus_lightly(results))
    out += ["", "## Every method", ""] + _table(TRAIN_HEAD, _training_rows(_ok(results, "methods") +
                                                                          _ok(results, "compile")))
    for r in _ok(results, "syncs"):
        x = r["result"]
        out += ["", "## Host synchronisations and GPU utilisation", "",
                f"{x['method']} at {x['size']} px: {x['syncs_per_step']} synchronisations per step "
                f"(sites: {x.get('sync_sites')}); GPU utilisation mean {x['gpu_util_mean']}% "
                f"({x.get('gpu_util_samples')} samples); {x['images_per_s']} images/s"]
    for section, title in (("embed", "sslforge embed"), ("export", "Export"), ("distributed", "Distributed")):
        rows = _ok(results, section)
        if rows:
            out += ["", f"## {title}", ""] + [f"- {r['name']}: {r['result']}" for r in rows]
    for r in _ok(results, "retrieval"):
        out += ["", f"## Retrieval: {r['name']}", ""]
        x = r["result"]
        if "backends" in x:
            out.append(f"{x['n']:,} x {x['dim']} vectors, {x['queries']} queries, k={x['k']}")
            out += [""] + _table(["backend", "seconds", "queries/s", "agreement with torch-cpu"],
                                 [[b, v["seconds"], v["queries_per_s"], v["agreement_with_torch_cpu"]]
                                  for b, v in x["backends"].items()])
        else:
            out.append(str(x))
    bad = [r for r in results if r["status"] != "ok"]
    out += ["", "## Failed and skipped", ""]
    out += _table(["section", "probe", "status", "why"],
                  [[r["section"], r["name"], r["status"], r.get("error") or r.get("reason")] for r in bad]) \
        if bad else ["none"]
    return "\n".join(out) + "\n"
