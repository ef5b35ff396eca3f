"""`make run`, retrieval part: index the embeddings dir that `make run` just wrote, search it, classify with it.

`make run` embeds the bundled sample's 1,000 test images with `sslforge embed --backend onnx` into
emb/quickstart; this indexes those vectors with `--kind auto`, prints one search (a row of the index
searched without itself) and, each row searched without itself, the weighted kNN accuracy from the
index (k=200, T=0.1: the vote of `sslforge eval knn`) and precision@10 by class label. Nothing is
embedded here.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pretrain.ground.knn import knn_vote, label_codes, topk_accuracy
from retrieval.embeddings import read_embeddings
from retrieval.evaluate import drop_self, evaluate_index
from retrieval.index import Index, IndexDirError


def quickstart(run: str | Path = "runs/quickstart", embeddings: str | Path = "emb/quickstart",
               out: str | Path = "runs/quickstart-retrieval", progress: bool = True) -> dict[str, float]:
    start = time.perf_counter()
    out = Path(out)
    emb = read_embeddings(embeddings)
    print(f"embeddings of {len(emb):,} images (dim {emb.dim}, {emb.manifest.get('backend') or 'unknown'} backend): "
          f"{embeddings}")
    index = Index.build(emb.vectors, emb.paths, emb.labels, kind="auto", model_fingerprint=emb.model_fingerprint,
                        progress=progress)
    index.info["root"] = emb.manifest.get("root", "")
    index.save(out / "index", source=str(Path(embeddings).resolve()))
    print(f"index: {out / 'index'} ({index.kind}; --kind auto: {index.info['auto_reason']})")

    rows = np.arange(len(emb))
    k = min(200, len(emb) - 1)
    sims, ids = drop_self(*index.search_ids(emb.vectors, k + 1), rows, k)
    print(f"\nsearch: image {emb.paths[0]} (label {emb.labels[0]}), its 5 nearest other images:")
    for rank, (score, i) in enumerate(zip(sims[0][:5], ids[0][:5]), 1):
        print(f"  {rank}. {score:.3f}  {index.labels[i] or '-':<10} {index.paths[i]}")

    classes = index.classes
    if not classes:
        raise IndexDirError(f"{embeddings} has no labelled rows: the quick start's kNN accuracy needs labels")
    codes = np.append(label_codes(index.labels, classes), -1)  # id -1 (no neighbour) -> code -1
    acc = topk_accuracy(knn_vote(sims, codes[ids], len(classes), 0.1), codes[rows])
    quality = evaluate_index(index, emb.vectors, emb.vectors, k=10, query_ids=rows, query_labels=emb.labels)
    print(f"\nkNN from the index (k={k}, T=0.1), each of the {len(emb):,} images against the others: "
          f"top-1 {acc['top1']:.3f}  top-5 {acc['top5']:.3f}")
    print(f"retrieval by class label, top 10 of the others: precision@10 {quality['precision@10']:.3f}  "
          f"mAP@10 {quality['mAP@10']:.3f}")
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Try:")
    root = Path(emb.manifest.get("root", ""))
    print(f"  sslforge search --index {out / 'index'} --model {run} {root / emb.paths[1]} --sheet sheet.png")
    print(f"  sslforge index eval --index {out / 'index'}")
    return {**acc, "precision@10": quality["precision@10"]}
