"""Write an embeddings dir of an image folder with a model dir (until `sslforge embed` lands).

    python bench/cifar_embed.py --model runs/cifar-simclr --images /tmp/cifar/test --out emb/cifar-test
"""
from __future__ import annotations

import argparse

from retrieval.embeddings import write_embeddings
from retrieval.query import embed_folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model dir")
    ap.add_argument("--images", required=True, help="image folder (class sub-folders give labels)")
    ap.add_argument("--out", required=True, help="embeddings dir to write")
    args = ap.parse_args()
    vectors, paths, labels, fingerprint = embed_folder(args.model, args.images)
    write_embeddings(args.out, vectors, paths, labels, model_fingerprint=fingerprint, model=args.model,
                     backend="torch", root=args.images)
    print(f"{len(paths):,} vectors of dim {vectors.shape[1]} -> {args.out}")


if __name__ == "__main__":
    main()
