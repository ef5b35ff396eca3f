"""Commands of the benchmark stage: `sslforge benchmark`, `sslforge plot tsne`, `sslforge data ...`."""
from __future__ import annotations

import argparse
import sys

from pretrain.ground.cliargs import add_batch_size, add_device, add_model, add_quiet, add_workers
from pretrain.ground.errors import ConfigError
from pretrain.train.config import parse_key_values


def cmd_benchmark(args: argparse.Namespace) -> None:
    from pretrain.study.grid import Grid, dataset_name, load_grid_file, run_grid

    values = load_grid_file(args.grid) if args.grid else {}
    if (args.data is None) != (args.test is None):
        raise ConfigError("--data and --test go together (train and test folders of one dataset)")
    if args.data:
        values["datasets"] = [{"name": args.name or dataset_name(args.data), "train": args.data, "test": args.test}]
    for key in ("methods", "transforms", "backbone", "epochs", "batch_size", "image_size", "out", "seed"):
        if getattr(args, key) is not None:
            values[key] = getattr(args, key)
    if args.eval is not None:
        values["eval"] = args.eval
    for item in args.method_epochs:  # the label may hold '=' itself (vicregl:alpha=0.75=48)
        label, sep, epochs = item.rpartition("=")
        if not sep or not label or not epochs.strip().isdigit():
            raise ConfigError(f"--method-epochs expects METHOD=EPOCHS, e.g. simsiam=48 (got {item!r})")
        values["method_epochs"] = {**values.get("method_epochs", {}), label.strip(): int(epochs)}
    for key, items in (("pretrain", args.set), ("linear", args.linear_arg), ("knn", args.knn_arg),
                       ("finetune", args.finetune_arg)):
        if items:
            values[key] = {**values.get(key, {}), **parse_key_values(items, f"--{key}")}
    grid = Grid.from_dict(values, source=args.grid or "options")
    result = run_grid(grid, progress=not args.quiet)
    print(f"results: {grid.out}/results.csv, {grid.out}/results.md, plots in {grid.out}/plots/")
    if result.failed:
        names = "; ".join(f"{c.name} ({why})" for c, why in result.failed)
        print(f"sslforge: {len(result.failed)} cells failed: {names}; run the same command again to retry them",
              file=sys.stderr)
        raise SystemExit(1)


def add_benchmark_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("benchmark", help="a grid of methods x pipelines: pretrain, evaluate, tabulate, plot",
                       description="Pretrain every method with every augmentation pipeline on each dataset (one "
                                   "model dir per cell), evaluate each (linear probe top-1/top-5, kNN), and write "
                                   "OUT/results.csv, OUT/results.md (the seed's tables) and OUT/plots/. Run the "
                                   "same command again to continue an interrupted grid: finished cells are "
                                   "skipped, the unfinished one resumes from its checkpoint.")
    p.add_argument("--grid", metavar="FILE.yaml", help="grid file (keys as below); command-line options override it")
    p.add_argument("--methods", help="comma-separated methods, each NAME or NAME:KEY=VALUE[:KEY=VALUE], "
                                     "e.g. simclr,byol,vicregl:alpha=0.75")
    p.add_argument("--transforms", help="comma-separated pipelines (NAME or NAME:KEY=VALUE), e.g. baseline,simclr,dcl")
    p.add_argument("--data", metavar="TRAIN_DIR", help="labelled training images (class sub-folders)")
    p.add_argument("--test", metavar="TEST_DIR", help="labelled test images with the same class folders")
    p.add_argument("--name", help="dataset name in the tables (default: the train folder's name, or its parent's "
                                  "when it is called train)")
    p.add_argument("--backbone", help="backbone of every cell (default: resnet18)")
    p.add_argument("--epochs", type=int, help="pretraining epochs per cell (default: 1)")
    p.add_argument("--method-epochs", dest="method_epochs", action="append", default=[], metavar="METHOD=EPOCHS",
                   help="another budget for one method's cells (a slow starter's longer one), e.g. simsiam=48; "
                        "METHOD is a name (all its variants) or a variant's label; repeat for several")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="pretraining batch size (default: 64)")
    p.add_argument("--image-size", dest="image_size", type=int,
                   help="training crop size (default: the images' typical size, at most 224)")
    p.add_argument("--seed", type=int, help="seed of every cell (default: 0)")
    p.add_argument("--eval", help="comma-separated evaluations: linear, knn, finetune (default: linear,knn; "
                                  "finetune fine-tunes every cell's model dir, see --finetune-arg)")
    p.add_argument("--out", metavar="DIR", help="grid folder: a model dir per cell, results, plots")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other `sslforge pretrain` option for every cell, e.g. max_images=2000, "
                        "small_stem=false, checkpoint_every_steps=20; repeat for several")
    p.add_argument("--linear-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="linear-probe option: epochs, lr, weight_decay, optimizer, batch_size (default: 100 epochs "
                        "of SGD at lr 0.1)")
    p.add_argument("--knn-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="kNN option: k, temperature (default: k=200, temperature=0.1)")
    p.add_argument("--finetune-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="fine-tuning option (any `sslforge finetune` option but the model, data, seed and device: "
                        "label_fraction, labels_per_class, from_head_layer, epochs, lr, ...; default: "
                        "label_fraction=0.1, epochs=30)")
    add_quiet(p, help="no progress bars in the cells")
    p.set_defaults(func=cmd_benchmark)


def cmd_plot_tsne(args: argparse.Namespace) -> None:
    from pretrain.data.images import scan_images
    from pretrain.ground.device import select_device
    from pretrain.ground.modeldir import load_model_dir
    from pretrain.study.plots import plot_embedding_2d
    from pretrain.study.tsne import tsne_2d
    from pretrain.train.evaluate import cached_features

    if args.max_images < 2 or args.perplexity <= 0:
        raise ConfigError("--max-images must be >= 2 and --perplexity > 0")
    model = load_model_dir(args.model)
    images = scan_images(args.data).random_subset(args.max_images, args.seed)
    feats = cached_features(model, images, batch_size=args.batch_size, workers=args.workers,
                            device=select_device(args.device), desc="embedding", progress=not args.quiet)
    points = tsne_2d(feats.features, perplexity=args.perplexity, seed=args.seed)
    title = f"t-SNE of {model.path.name} embeddings, {len(points)} images of {args.data}"
    out = args.out or str(model.path / "plots" / "tsne.png")
    plot_embedding_2d(points, feats.labels.numpy(), images.classes, out, title=title)
    print(f"wrote {out}")


def add_tsne_command(plot_sub: argparse._SubParsersAction) -> None:
    p = plot_sub.add_parser("tsne", help="t-SNE map of a model's embeddings of a folder, coloured by class",
                            description="Embed images with a model dir's backbone (features cached in the model "
                                        "dir), project them to 2-d with t-SNE (scikit-learn) and draw them coloured "
                                        "by class folder, with a legend.")
    add_model(p)
    p.add_argument("--data", required=True, metavar="DIR", help="images, ideally with class sub-folders (colours)")
    p.add_argument("--out", metavar="FILE.png", help="PNG to write (default: RUN_DIR/plots/tsne.png)")
    p.add_argument("--max-images", type=int, default=2000,
                   help="a fixed random subset of this many images (default: 2000)")
    p.add_argument("--perplexity", type=float, default=30.0, help="t-SNE perplexity (default: 30)")
    p.add_argument("--seed", type=int, default=0, help="picks the subset and seeds t-SNE (default: 0)")
    add_batch_size(p)
    add_workers(p)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=cmd_plot_tsne)


def cmd_data_download(args: argparse.Namespace) -> None:
    from pretrain.data.downloads import prepare

    train, test = prepare(args.dataset, args.root, progress=not args.quiet, keep_archive=args.keep_archive)
    print(f"train: {train}\ntest:  {test}")
    print(f"next: sslforge benchmark --data {train} --test {test} --methods simclr,byol --transforms baseline,simclr "
          f"--out bench/{args.dataset}")


def cmd_data_nabirds(args: argparse.Namespace) -> None:
    from pretrain.data.downloads import nabirds_to_folders

    train, test = nabirds_to_folders(args.source, args.out, copy=args.copy)
    print(f"train: {train}\ntest:  {test}")


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    from pretrain.data.downloads import DATASETS

    data = sub.add_parser("data", help="get the seed's datasets as train/test class folders",
                          description="Download and prepare the benchmark datasets as train/ and test/ folders "
                                      "with one sub-folder per class.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION",
                                   help="`sslforge data ACTION --help` for its options")
    p = data_sub.add_parser("download", help="download, verify, extract (and for CIFAR convert to JPEG folders)",
                            description="Download a dataset archive from its official URL (resumes a partial "
                                        "download), check its size and published checksum, extract it safely and, "
                                        "for CIFAR, write the images as JPEG class folders.")
    p.add_argument("dataset", choices=sorted(DATASETS), help="which dataset")
    p.add_argument("--root", default="data", metavar="DIR", help="where to put it (default: data)")
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded archive after extraction")
    add_quiet(p)
    p.set_defaults(func=cmd_data_download)
    p = data_sub.add_parser("nabirds", help="turn a local NABirds copy into train/test class folders",
                            description="NABirds cannot be downloaded without accepting its terms: from a local "
                                        "copy (images/ + classes.txt, image_class_labels.txt, train_test_split.txt, "
                                        "images.txt) write OUT/train/CLASS/ and OUT/test/CLASS/ (symbolic links by "
                                        "default).")
    p.add_argument("source", metavar="NABIRDS_DIR", help="the unpacked NABirds folder")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write train/ and test/ into")
    p.add_argument("--copy", action="store_true", help="copy the images instead of linking them")
    p.set_defaults(func=cmd_data_nabirds)
