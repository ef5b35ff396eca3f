"""`make run`, retrieval part: index the bundled sample with the quick-start model, search, classify.

Embeds the sample's 5,000 train and 1,000 test images with the model dir (the features pretrain's
quick start cached are reused), writes them as embeddings dirs, builds an index of the train images
with `--kind auto`, prints one search and the kNN accuracy from the index (k=200, T=0.1: the same
protocol and vote as the quick start's kNN line, so the two top-1 figures agree).
"""
from __future__ import annotations

import time
from pathlib import Path

from retrieval.embeddings import read_embeddings, write_embeddings
from retrieval.evaluate import evaluate_index
from retrieval.index import Index
from retrieval.knn import classify, label_codes, topk_accuracy
from retrieval.query import embed_folder


def quickstart(run: str | Path = "runs/quickstart", sample: str | Path | None = None,
               out: str | Path = "runs/quickstart-retrieval", progress: bool = True) -> dict[str, float]:
    start = time.perf_counter()
    if sample is None:
        from pretrain.data.images import sample_dir  # the bundled sample lives in pretrain's package data

        sample = sample_dir()
    sample, out = Path(sample), Path(out)
    emb = {}
    for split in ("train", "test"):
        vectors, paths, labels, fingerprint = embed_folder(run, sample / split, progress=progress)
        emb[split] = write_embeddings(out / f"emb-{split}", vectors, paths, labels, model_fingerprint=fingerprint,
                                      model=str(run), backend="torch", root=str(sample / split))
        print(f"embeddings of {len(paths):,} {split} images (dim {vectors.shape[1]}): {emb[split]}")
    train, test = read_embeddings(emb["train"]), read_embeddings(emb["test"])
    index = Index.build(train.vectors, train.paths, train.labels, kind="auto",
                        model_fingerprint=train.model_fingerprint, progress=progress)
    index.info["root"] = train.manifest["root"]
    index.save(out / "index", source=str(emb["train"].resolve()))
    print(f"index: {out / 'index'} ({index.kind}; --kind auto: {index.info['auto_reason']})")

    index.check_model(test.model_fingerprint)
    _, _, hits = index.search(test.vectors[:1], 5)
    print(f"\nsearch: test image {test.paths[0]} (label {test.labels[0]}), its 5 nearest train images:")
    for rank, hit in enumerate(hits[0], 1):
        print(f"  {rank}. {hit['score']:.3f}  {hit['label']:<10} {hit['path']}")

    scores, classes = classify(index, test.vectors, k=200, temperature=0.1)
    acc = topk_accuracy(scores, label_codes(test.labels, classes))
    quality = evaluate_index(index, train.vectors, test.vectors, k=10, query_labels=test.labels)
    print(f"\nkNN from the index (k=200, T=0.1) on the {len(test):,} test images: top-1 {acc['top1']:.3f}  "
          f"top-5 {acc['top5']:.3f}")
    print(f"retrieval by class label, top 10 of {len(train):,}: precision@10 {quality['precision@10']:.3f}  "
          f"mAP@10 {quality['mAP@10']:.3f}")
    print(f"\ndone in {time.perf_counter() - start:.0f} s. Try:")
    print(f"  sslforge search --index {out / 'index'} --model {run} {sample / 'test' / test.paths[1]} "
          f"--sheet sheet.png")
    print(f"  sslforge index eval --index {out / 'index'} --queries {emb['test']}")
    return {**acc, "precision@10": quality["precision@10"]}
