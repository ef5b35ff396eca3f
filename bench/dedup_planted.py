"""Near-duplicate precision and recall on a planted set: the CIFAR-10 test images plus altered copies of 500.

    python bench/dedup_planted.py --model runs/NAME --test /tmp/cifar/test --out /tmp/dedup-planted

500 evenly spaced test images get one copy each, in turn re-encoded (JPEG quality 40), resized (to 48 px and
back), cropped (the central 26 px, resized back) or flipped (left-right), written next to the 10,000 originals.
All 10,500 are embedded with `sslforge embed` (torch backend), indexed flat, and `sslforge dedup`'s grouping
runs at each --thresholds value. A predicted pair is two images in one group; it is right when it is an
original and its copy. Precision: right pairs / predicted pairs; recall: planted pairs found / 500, per kind too.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image, ImageOps

KINDS = ("reencoded", "resized", "cropped", "flipped")


def alter(image: Image.Image, kind: str, out: Path) -> None:
    w, h = image.size
    if kind == "reencoded":
        image.save(out, format="JPEG", quality=40)
        return
    if kind == "resized":
        image = image.resize((48, 48), Image.BICUBIC).resize((w, h), Image.BICUBIC)
    elif kind == "cropped":
        image = ImageOps.fit(image, (26, 26)).resize((w, h), Image.BICUBIC)
    else:
        image = ImageOps.mirror(image)
    image.save(out, format="JPEG", quality=95)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model dir that embeds the images")
    p.add_argument("--test", type=Path, required=True, help="CIFAR-10 test folder (class sub-folders)")
    p.add_argument("--out", type=Path, default=Path("/tmp/dedup-planted"))
    p.add_argument("--copies", type=int, default=500)
    p.add_argument("--thresholds", default="0.98,0.99,0.995,0.998")
    p.add_argument("--reuse", action="store_true", help="keep OUT/emb when it is complete (same model and images)")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()

    from export.embed import embed_images
    from export.embedder import Embedder
    from retrieval import Index, IndexDirError, read_embeddings
    from retrieval.dedup import find_groups

    images = args.out / "images"
    originals = sorted(args.test.rglob("*.jpg"))
    step = len(originals) // args.copies
    planted = {}  # copy's relative path -> (original's relative path, kind)
    if not images.exists():
        shutil.copytree(args.test, images)
    for n, src in enumerate(originals[::step][:args.copies]):
        kind = KINDS[n % len(KINDS)]
        rel = src.relative_to(args.test)
        copy = rel.with_name(f"{rel.stem}-copy-{kind}.jpg")
        with Image.open(src) as im:
            alter(im.convert("RGB"), kind, images / copy)
        planted[copy.as_posix()] = (rel.as_posix(), kind)
    emb = args.out / "emb"
    if not (args.reuse and (emb / "manifest.json").is_file()):
        shutil.rmtree(emb, ignore_errors=True)
        embed_images(Embedder.load(args.model, "torch", device="cpu"), images, emb, workers=args.workers,
                     progress=True)
    e = read_embeddings(emb)
    index = Index.build(e.vectors, e.paths, e.labels, kind="flat")
    row = {p: i for i, p in enumerate(index.paths)}
    truth = {frozenset((row[o], row[c])): kind for c, (o, kind) in planted.items()}
    results = []
    for t in (float(v) for v in args.thresholds.split(",")):
        try:
            groups = find_groups(index, t)
        except IndexDirError as e:
            print(f"threshold {t}: {e}")
            continue
        group_of = {r: n for n, g in enumerate(groups.rows) for r in g.tolist()}
        predicted = sum(len(g) * (len(g) - 1) // 2 for g in groups.rows)  # pairs inside groups
        found = {pair: kind for pair, kind in truth.items()
                 if len({group_of.get(r, -1 - r) for r in pair}) == 1}  # both in one group
        right = len(found)
        per_kind = {k: sum(1 for kind in found.values() if kind == k) / sum(1 for kind in truth.values() if kind == k)
                    for k in KINDS}
        largest = len(groups.rows[0]) if groups.rows else 0
        results.append({"threshold": t, "groups": len(groups.rows), "largest": largest,
                        "predicted_pairs": predicted, "direct_pairs": groups.pairs,
                        "precision": right / predicted if predicted else 1.0,
                        "recall": right / len(truth), **{f"recall_{k}": v for k, v in per_kind.items()}})
        print(json.dumps(results[-1]))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print("\n| threshold | groups | largest | pairs >= threshold | pairs inside groups | precision | recall | "
          + " | ".join(KINDS) + " |")
    print("|---|---|---|---|---|---|---|" + "---|" * len(KINDS))
    for r in results:
        print(f"| {r['threshold']} | {r['groups']} | {r['largest']} | {r['direct_pairs']} | {r['predicted_pairs']} | "
              f"{r['precision']:.3f} | "
              f"{r['recall']:.3f} | " + " | ".join(f"{r[f'recall_{k}']:.3f}" for k in KINDS) + " |")


if __name__ == "__main__":
    main()
