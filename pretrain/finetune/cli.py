"""Commands of fine-tuning: `sslforge finetune`, `sslforge eval finetune` and `sslforge eval head`.

Every option of `finetune` comes from FinetuneConfig's field help, like `pretrain`'s from PretrainConfig.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pretrain.ground.cliargs import add_batch_size, add_device, add_model, add_quiet, add_workers
from pretrain.ground.errors import ConfigError
from pretrain.train.config import FinetuneConfig
from pretrain.train.options import add_pretrain_options, config_from_args, launch_devices

FINETUNE_DESCRIPTION = (
    "Train a model dir's backbone (and the head layers it keeps, with --from-head-layer) together with a new "
    "linear classifier on labelled images: all of --train, or a class-balanced, seeded share of it "
    "(--label-fraction 0.01 | 0.1, --labels-per-class N), saved in the run's finetune.json. Without --model (or "
    "with --from-scratch --backbone NAME) the same training starts from random weights: the supervised baseline. "
    "The result is a model dir whose head is the classifier: `sslforge export`, `sslforge serve` (/classify) and "
    "`sslforge distill --teacher` use it as it is. Defaults for small label sets (light augmentation, the "
    "backbone at 0.1x the classifier's learning rate, weight decay, cosine schedule): docs/benchmarks/fine-tuning.md, "
    "\"Fine-tuning and semi-supervised learning\".")


def cmd_finetune(args: argparse.Namespace) -> None:
    from pretrain.finetune.run import FinetuneTrainer, result_line
    from pretrain.ground import distributed
    from pretrain.ground.modeldir import load_model_dir

    cfg, resume = config_from_args(args, FinetuneConfig)
    if args.devices != 1:
        launch_devices(args, cfg)
    out = FinetuneTrainer(cfg, resume=resume, progress=not args.quiet).fit()
    if distributed.is_main():
        model = load_model_dir(out)
        print(result_line(model))
        print(f"model dir: {out} (head: {len(model.classes)} classes)")
        print(f"next: sslforge export onnx {out} --with-head; sslforge distill --teacher {out} --data UNLABELLED_DIR "
              f"--out STUDENT_DIR")


def default_eval_out(cfg: FinetuneConfig) -> str:
    """Where `sslforge eval finetune` writes its run: inside the evaluated model dir, one folder per setting."""
    labels = (f"{cfg.labels_per_class}-per-class" if cfg.labels_per_class is not None
              else f"{cfg.label_fraction or 1.0:g}-of-labels")
    layers = "" if cfg.from_head_layer is None else f"-head{cfg.from_head_layer}"
    return str(Path(cfg.model) / "finetune" / f"{labels}{layers}-seed{cfg.seed}")


def cmd_eval_finetune(args: argparse.Namespace) -> None:
    from pretrain.finetune.run import finetune_once, result_line
    from pretrain.ground import distributed
    from pretrain.ground.modeldir import load_model_dir

    cfg, _ = config_from_args(args, FinetuneConfig)
    if not cfg.model or not cfg.test:
        raise ConfigError("sslforge eval finetune needs --model RUN_DIR and --test TEST_DIR (for a supervised "
                          "baseline use `sslforge finetune --from-scratch`)")
    if args.devices != 1:
        launch_devices(args, cfg)
    out = finetune_once(cfg.replace(out=cfg.out or default_eval_out(cfg)), progress=not args.quiet)
    if distributed.is_main():
        print(result_line(load_model_dir(out)))
        print(f"fine-tuned model dir: {out}")


def cmd_eval_head(args: argparse.Namespace) -> None:
    from pretrain.data.images import DataError, scan_images
    from pretrain.ground.device import select_device
    from pretrain.ground.modeldir import load_model_dir
    from pretrain.train.evaluate import classifier_accuracy

    model = load_model_dir(args.model)
    head = model.load_head()
    test = scan_images(args.test)
    if test.classes != model.classes:
        raise DataError(f"{test.root} has other class folders than the head of {model.path} names "
                        f"({len(test.classes or [])} vs {len(model.classes)}): evaluate on its own classes")
    device = select_device(args.device)
    result = classifier_accuracy(model.load_backbone(device), head.to(device), test, model.preprocessing,
                                 batch_size=args.batch_size, workers=args.workers, device=device,
                                 desc="test", progress=not args.quiet)
    trained_by = ((model.info.get("head") or {}).get("metrics") or {}).get("trained_by", "a linear probe")
    print(f"head ({trained_by}) of {model.path} on {result['images']} test images: top-1 {result['top1']:.4f}  "
          f"top-5 {result['top5']:.4f}")


def add_finetune_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="fine-tune a model dir (or train from scratch) with labels; saves the head",
                       description=FINETUNE_DESCRIPTION)
    add_pretrain_options(p, FinetuneConfig)
    p.set_defaults(func=cmd_finetune)


def add_eval_finetune_commands(ev_sub: argparse._SubParsersAction) -> None:
    p = ev_sub.add_parser("finetune", help="fine-tune the model dir on (a share of) the labels; top-1/top-5",
                          description="The fine-tuning protocol: `sslforge finetune` of --model on --train (or its "
                                      "--label-fraction / --labels-per-class share), then top-1 and top-5 on --test. "
                                      "The run goes to --out (default: MODEL/finetune/<labels>-seed<seed>); "
                                      "the same command again continues an interrupted run or prints the finished "
                                      "one's result.")
    add_pretrain_options(p, FinetuneConfig, resume=False)
    p.set_defaults(func=cmd_eval_finetune)
    p = ev_sub.add_parser("head", help="top-1/top-5 of the model dir's classifier head on labelled images",
                          description="Classify --test with the model dir's head (a linear probe, a fine-tuned "
                                      "classifier or a distilled student's) and print top-1 and top-5.")
    add_model(p, help="model dir with a head")
    p.add_argument("--test", required=True, metavar="DIR", help="labelled test images, the head's class folders")
    add_batch_size(p)
    add_workers(p)
    add_device(p)
    add_quiet(p)
    p.set_defaults(func=cmd_eval_head)
