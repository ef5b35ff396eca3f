"""The `sslforge` command line. Every option of `pretrain` (and `finetune`) comes from PretrainConfig's (and
FinetuneConfig's) field help."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from importlib.metadata import entry_points

from pretrain import __version__
from pretrain.data.images import DataError
from pretrain.ground.cliargs import add_batch_size, add_device, add_knn_vote, add_model, add_quiet, add_workers
from pretrain.ground.errors import ConfigError
from pretrain.ground.modeldir import ModelDirError
from pretrain.study.cli import add_benchmark_command, add_data_commands, add_tsne_command
from pretrain.train.config import RECIPES, parse_key_values
from pretrain.train.options import Launched, add_pretrain_options, config_from_args, launch_devices

ERRORS = (ConfigError, DataError, ModelDirError)
COMMAND_PLUGINS = "sslforge.commands"  # entry-point group through which export/retrieval/serve add commands


def cmd_pretrain(args: argparse.Namespace) -> None:
    from pretrain.ground import distributed
    from pretrain.train.trainer import Trainer

    cfg, resume = config_from_args(args)  # bad options fail here, before any process starts
    if args.devices != 1:
        launch_devices(args, cfg)
    out = Trainer(cfg, resume=resume, progress=not args.quiet).fit()
    if distributed.is_main():
        print(f"model dir: {out}")
        print(f"next: sslforge eval knn --model {out} --train TRAIN_DIR --test TEST_DIR")


def cmd_distill(args: argparse.Namespace) -> None:
    args.method = "distill"
    args.method_args = [*getattr(args, "method_args", []), f"teacher={args.teacher}",
                        f"temperature={args.temperature}"]
    cmd_pretrain(args)


def _eval_inputs(args: argparse.Namespace):
    from pretrain.data.images import scan_images
    from pretrain.finetune.labels import select_labels
    from pretrain.ground.device import select_device
    from pretrain.ground.modeldir import load_model_dir
    from pretrain.train.evaluate import cached_features, class_count

    model = load_model_dir(args.model)
    train, test = scan_images(args.train), scan_images(args.test)
    num_classes = class_count(train, test)
    train = select_labels(train, args.label_fraction, args.labels_per_class, args.seed)
    kwargs = dict(batch_size=args.batch_size, workers=args.workers, device=select_device(args.device),
                  progress=not args.quiet)
    return model, train, cached_features(model, train, desc="train features", **kwargs), \
        cached_features(model, test, desc="test features", **kwargs), num_classes


def cmd_eval_knn(args: argparse.Namespace) -> None:
    from pretrain.train.evaluate import knn_evaluate

    if args.k < 1 or args.temperature <= 0:
        raise ConfigError("--k must be >= 1 and --temperature > 0")
    _, _, train, test, num_classes = _eval_inputs(args)
    result = knn_evaluate(train, test, num_classes, k=args.k, temperature=args.temperature)
    print(f"kNN (k={args.k}, T={args.temperature}, {len(train.labels)} labelled images) on {len(test.labels)} test "
          f"images: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}")


def cmd_eval_linear(args: argparse.Namespace) -> None:
    from pretrain.train.evaluate import linear_probe

    if args.epochs < 1 or args.lr <= 0 or args.weight_decay < 0:
        raise ConfigError("--epochs must be >= 1, --lr > 0 and --weight-decay >= 0")
    model, train_images, train, test, num_classes = _eval_inputs(args)
    result = linear_probe(train, test, num_classes, epochs=args.epochs, batch_size=args.probe_batch_size,
                          lr=args.lr, weight_decay=args.weight_decay, optimizer=args.optimizer, seed=args.seed,
                          progress=not args.quiet)
    print(f"linear probe ({args.optimizer}, {args.epochs} epochs, {len(train.labels)} labelled images) on "
          f"{len(test.labels)} test images: "
          f"top-1 {result.metrics['top1']:.4f}  top-5 {result.metrics['top5']:.4f}")
    if not args.no_save:
        model.save_head(result.head, train_images.classes,
                        {**result.metrics, "epochs": args.epochs, "optimizer": args.optimizer,
                         "train": str(args.train), "test": str(args.test), "labelled_images": len(train.labels),
                         "label_fraction": args.label_fraction, "labels_per_class": args.labels_per_class})
        print(f"saved the head to {model.path / 'head.safetensors'} ({num_classes} classes)")


def cmd_methods(args: argparse.Namespace) -> None:
    from pretrain.methods import recipe_table

    print(recipe_table(args.recipe))


def cmd_doctor(args: argparse.Namespace) -> None:
    from pretrain.ground.doctor import as_json, render, sections

    parts = sections()
    print(as_json(parts) if args.json else render(parts))


def cmd_sample(args: argparse.Namespace) -> None:
    from pretrain.data.images import sample_dir

    print(sample_dir())


def cmd_quickstart(args: argparse.Namespace) -> None:
    from pretrain.quickstart import quickstart

    quickstart(out=args.out, epochs=args.epochs, images=args.images, backbone=args.backbone,
               batch_size=args.batch_size, progress=not args.quiet)


def cmd_plot_views(args: argparse.Namespace) -> None:
    from pretrain.data.images import load_rgb, sample_dir, scan_images, typical_size
    from pretrain.views.plot import plot_views, upscale
    from pretrain.views.recipes import build_transform

    if args.images < 1:
        raise ConfigError("--images must be >= 1")
    images = scan_images(args.data or sample_dir() / "train").random_subset(args.images, args.seed)
    size = args.image_size or min(224, typical_size(images))
    transform = build_transform(args.transform, size, parse_key_values(args.transform_arg, "--transform-arg"))
    sources = [upscale(load_rgb(path), size) for path in images.paths[:args.images]]
    out = plot_views(transform, sources, args.out, title=f"--transform {args.transform} at {size} px", seed=args.seed)
    print(f"wrote {out}")


def add_plot_commands(sub: argparse._SubParsersAction) -> None:
    """`sslforge plot WHAT`: pictures of a pipeline or a model (one sub-command each)."""
    plot = sub.add_parser("plot", help="pictures: the views of a pipeline, a t-SNE map of a model's embeddings",
                          description="Draw pictures that show what a pipeline or a model does.")
    plot_sub = plot.add_subparsers(dest="plot_command", required=True, metavar="WHAT",
                                   help="`sslforge plot WHAT --help` for its options")
    views_help = "a grid of images (rows) and their training views (columns)"
    _add_views_options(plot_sub.add_parser("views", help=views_help, description=VIEWS_DESCRIPTION))
    _add_views_options(sub.add_parser("views", help=views_help + " (same as `plot views`)",
                                      description=VIEWS_DESCRIPTION))
    add_tsne_command(plot_sub)


VIEWS_DESCRIPTION = ("Apply an augmentation pipeline to a few images and draw a PNG grid: each source image, "
                     "then its views, un-normalised (crop boxes drawn on the source for vicregl, rotation labels "
                     "for lorot).")


def _add_views_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transform", required=True, help="pipeline name (as for `sslforge pretrain --transform`)")
    p.add_argument("--transform-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a pipeline option, e.g. local_views=4; repeat for several")
    p.add_argument("--data", default=None, metavar="DIR", help="image folder (default: the bundled CIFAR-10 sample)")
    p.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="view size in pixels (default: the images' typical short side, at most 224); smaller "
                        "images are upscaled (bicubic) to it first")
    p.add_argument("--images", type=int, default=4, help="number of source images, one row each (default: 4)")
    p.add_argument("--seed", type=int, default=0, help="picks the images and the views (default: 0)")
    p.add_argument("--out", required=True, metavar="FILE.png", help="PNG file to write")
    p.set_defaults(func=cmd_plot_views)


def _add_eval_common(p: argparse.ArgumentParser) -> None:
    add_model(p)
    p.add_argument("--train", required=True, metavar="DIR", help="labelled reference images (class sub-folders)")
    p.add_argument("--test", required=True, metavar="DIR", help="labelled test images with the same class folders")
    add_batch_size(p)
    add_workers(p)
    add_device(p)
    add_quiet(p)
    add_label_options(p)


def add_label_options(p: argparse.ArgumentParser) -> None:
    """Which labels of --train an evaluation may use: a class-balanced, seeded share (pretrain/finetune/labels.py)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("--label-fraction", type=float, default=None, metavar="F",
                       help="use only this share of the --train labels (0.01 = 1%%), the same share of every class, "
                            "picked by --seed (default: all)")
    group.add_argument("--labels-per-class", type=int, default=None, metavar="N",
                       help="use only N labelled --train images of every class, picked by --seed")
    p.add_argument("--seed", type=int, default=0, help="picks the labelled images, and seeds the probe (default: 0)")


def build_parser() -> argparse.ArgumentParser:
    from pretrain.finetune.cli import add_eval_finetune_commands, add_finetune_command

    parser = argparse.ArgumentParser(
        prog="sslforge", description="Self-supervised image backbones: pretrain, evaluate, and (later stages) "
                                     "export, index and serve them.")
    parser.add_argument("--version", action="version", version=f"sslforge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                help="run `sslforge COMMAND --help` for its options")

    p = sub.add_parser("pretrain", help="train a backbone with a self-supervised method",
                       description="Train a backbone with a self-supervised method and write a model dir.")
    add_pretrain_options(p)
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("distill", help="train a student to match a teacher's predictions on unlabeled images",
                       description="SimCLRv2 distillation: a student backbone + linear classifier learns from "
                                   "unlabeled --data to match the softened predictions of a teacher model dir that "
                                   "has a head (`sslforge eval linear`). The student's model dir gets the "
                                   "classifier as its head. Every pretraining option applies (e.g. a smaller "
                                   "--backbone).")
    p.add_argument("--teacher", required=True, metavar="RUN_DIR", help="teacher model dir with a linear-probe head")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="softening temperature of both distributions (default: 1.0)")
    add_pretrain_options(p)
    p.set_defaults(func=cmd_distill)

    add_finetune_command(sub)

    ev = sub.add_parser("eval", help="evaluate a model dir (knn, linear, finetune, head)",
                        description="Evaluate a trained backbone: on frozen features (knn, linear), fine-tuned "
                                    "(finetune), or a model dir's own classifier head (head).")
    ev_sub = ev.add_subparsers(dest="eval_command", required=True, metavar="PROTOCOL",
                               help="knn, linear, finetune or head; `sslforge eval PROTOCOL --help` for its options")
    p = ev_sub.add_parser("knn", help="weighted kNN classifier on L2-normalised features",
                          description="Weighted kNN: the k most cosine-similar training images vote for their "
                                      "class with weight exp(similarity / T). Prints top-1 and top-5.")
    _add_eval_common(p)
    add_knn_vote(p)
    p.set_defaults(func=cmd_eval_knn)
    p = ev_sub.add_parser("linear", help="linear probe on frozen features; saves the head",
                          description="Train a linear classifier on frozen, cached, standardised features with a "
                                      "cosine schedule; print top-1/top-5 and save head.safetensors in the model dir.")
    _add_eval_common(p)
    p.add_argument("--epochs", type=int, default=100, help="passes over the cached features (default: 100)")
    p.add_argument("--optimizer", choices=("sgd", "adamw", "lbfgs"), default="sgd",
                   help="sgd (momentum 0.9), adamw, or full-batch lbfgs (default: sgd)")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (default: 0.1)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="L2 penalty (default: 0)")
    p.add_argument("--probe-batch-size", type=int, default=256, help="features per probe step (default: 256)")
    p.add_argument("--no-save", action="store_true", help="do not write head.safetensors")
    p.set_defaults(func=cmd_eval_linear)
    add_eval_finetune_commands(ev_sub)

    p = sub.add_parser("methods", help="list the SSL methods and their recipes",
                       description="List every method with its default views and a recipe: the optimizer, base "
                                   "learning rate (for a batch of 256; the trainer scales it by batch/256), weight "
                                   "decay and every hyper-parameter (those the recipe sets, rather than the "
                                   "paper's default, are marked *). `sslforge pretrain --recipe NAME` uses it.")
    p.add_argument("--recipe", choices=RECIPES, default="default",
                   help="default: tuned for one device and batches of 64-512; paper: each paper's own large-batch "
                        "recipe (default: default)")
    p.set_defaults(func=cmd_methods)
    p = sub.add_parser("doctor", help="what this machine has and where each stage will run (GPUs, providers)",
                       description="One line each: torch with its CUDA and cuDNN builds, the GPUs and bf16 support, "
                                   "where training runs; onnxruntime's wheel and providers and the one --backend "
                                   "onnx uses; TensorRT; the Faiss wheel and its GPUs and where exact search runs; "
                                   "BentoML and Gradio. A missing extra is a line saying what to install.")
    p.add_argument("--json", action="store_true", help="print the report as JSON (section -> name -> value)")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("sample", help="print the folder of the bundled CIFAR-10 sample (unpacks it once)",
                       description="Unpack the bundled CIFAR-10 sample (5,000 train / 1,000 test images) into the "
                                   "cache folder ($SSLFORGE_CACHE or ~/.cache/sslforge) and print its path.")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("quickstart", help="the `make run` demo: SimCLR on the bundled sample, kNN vs random init",
                       description="Pretrain SimCLR on the bundled CIFAR-10 sample, then compare the kNN accuracy "
                                   "of the trained backbone with a randomly initialised one.")
    p.add_argument("--out", default="runs/quickstart",
                   help="run folder (default: runs/quickstart); an existing finished run is evaluated again, "
                        "an unfinished one resumed")
    p.add_argument("--epochs", type=int, default=3, help="pretraining epochs (default: 3)")
    p.add_argument("--images", type=int, default=2000, help="training images taken from the sample (default: 2000)")
    p.add_argument("--backbone", default="resnet18", help="backbone (default: resnet18, small-image stem)")
    p.add_argument("--batch-size", type=int, default=64, help="images per step (default: 64)")
    add_quiet(p)
    p.set_defaults(func=cmd_quickstart)
    add_plot_commands(sub)
    add_benchmark_command(sub)
    add_data_commands(sub)
    parser.set_defaults(plugin_errors=add_plugin_commands(sub))
    return parser


def add_plugin_commands(sub: argparse._SubParsersAction) -> tuple[type[Exception], ...]:
    """Let the later stages add their commands without pretrain importing them (imports point one way).

    Each entry point of group `sslforge.commands` is `add_commands(subparsers) -> error types`: the
    exceptions its commands raise for bad input, which `main` prints as one-line errors.
    """
    errors: list[type[Exception]] = []
    for ep in sorted(entry_points(group=COMMAND_PLUGINS), key=lambda e: e.name):
        errors.extend(ep.load()(sub))
    return tuple(errors)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    from pretrain.ground.distributed import RanksDisagree, is_main, launched
    from pretrain.train.trainer import TrainingDiverged

    warnings.formatwarning = _one_line_warning
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        args.func(args)
    except Launched as e:
        return e.code
    except ERRORS + args.plugin_errors as e:
        if not (isinstance(e, RanksDisagree) and not is_main()):  # every process has it: rank 0 says it
            rank = f"rank {os.environ.get('RANK')}: " if launched() else ""
            print(f"sslforge: error: {rank}{e}", file=sys.stderr)
        return 2
    except TrainingDiverged as e:
        print(f"sslforge: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        hint = {"pretrain": f"; continue with `sslforge pretrain --resume --out {out}`" if out else "",
                "finetune": f"; continue with `sslforge finetune --resume --out {out}`" if out else "",
                "benchmark": "; run the same command again to continue the grid"}.get(args.command, "")
        print("\nsslforge: interrupted" + hint, file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
