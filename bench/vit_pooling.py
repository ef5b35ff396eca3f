"""A ViT model dir's embedding pooled two ways, its class token and the mean of its patch tokens (after the final
norm), scored by weighted kNN (k=200, T=0.1) and a linear probe, beside the same ViT at random init:

    python bench/vit_pooling.py MODEL_DIR --data DIR --out bench/results/start-from/mae-val-pooling.json

DIR holds train/<class>/ (the kNN bank: --bank-images of them) and test/<class>/ (the scored images). For recipe
choices DIR is the validation layout of docs/pretrained.md (train: CIFAR-10 train less the validation split of
bench/cifar_val.py; test: that split), never the test set.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import runinfo  # noqa: E402
from start_from import Scorer  # noqa: E402


class Pooled(nn.Module):
    """A timm ViT's tokens after its final norm, pooled by the class token ("cls") or the patch mean ("avg")."""

    def __init__(self, vit: nn.Module, how: str):
        super().__init__()
        self.vit, self.how = vit, how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.forward_features(x)
        return tokens[:, 0] if self.how == "cls" else tokens[:, self.vit.num_prefix_tokens:].mean(1)


def main(argv: list[str] | None = None) -> int:
    from pretrain.ground.atomic import write_json
    from pretrain.ground.modeldir import load_model_dir

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", help="a model dir whose backbone is a timm ViT")
    p.add_argument("--data", required=True, help="folder with train/<class>/ (the bank) and test/<class>/")
    p.add_argument("--out", help="write the result here as JSON")
    p.add_argument("--bank-images", type=int, default=10000, help="training images of the kNN bank")
    p.add_argument("--probe-epochs", type=int, default=100, help="epochs of the linear probe")
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    scorer = Scorer(argparse.Namespace(cifar=args.data, bank_images=args.bank_images, curve_test=1, device="cpu",
                                       workers=args.workers, probe_epochs=args.probe_epochs))
    model = load_model_dir(args.model_dir)
    scores = {}
    for name in ("trained", "random_init"):
        torch.manual_seed(0)  # the random init of bench/start_from.py's floor
        vit = model.load_backbone("cpu") if name == "trained" else model.random_backbone()
        for how in ("cls", "avg"):
            scores[f"{name}_{how}"] = scorer.knn(Pooled(vit.eval(), how), model.preprocessing, linear=True)
            print(name, how, scores[f"{name}_{how}"], flush=True)
    result = {"command": " ".join(["bench/vit_pooling.py", *sys.argv[1:]]), "commit": runinfo.commit(),
              "model_dir": args.model_dir, "bank_images": args.bank_images, "test_images": len(scorer.test), **scores}
    if args.out:
        write_json(Path(args.out), result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
