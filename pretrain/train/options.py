"""The options of the training commands (`pretrain`, `distill`, `finetune`): one per field of the config
dataclass, and how they merge with a --config file or a resumed run's saved settings; `--devices N`.

pretrain/cli.py and pretrain/finetune/cli.py build their commands from these.
"""
from __future__ import annotations

import argparse
import dataclasses

from pretrain.ground.cliargs import add_quiet
from pretrain.ground.errors import ConfigError
from pretrain.train.config import Config, PretrainConfig, load_yaml, parse_key_values

DICT_OPTIONS = {"backbone_args": "--backbone-arg", "transform_args": "--transform-arg", "method_args": "--method-arg"}


class BoolOption(argparse.BooleanOptionalAction):
    """`--flag`, `--no-flag`, and `--flag true|false` (as the YAML config writes it)."""

    WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}

    def __init__(self, option_strings, dest, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.nargs = "?"
        self.metavar = "true|false"

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string and option_string.startswith("--no-"):
            if values is not None:
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
            return
        word = "true" if values is None else str(values).lower()
        if word not in self.WORDS:
            parser.error(f"{option_string} takes true or false (got {values!r})")
        setattr(namespace, self.dest, self.WORDS[word])


def _type_of(f) -> type:
    return {"int": int, "float": float, "str": str, "bool": bool, "dict": dict}[f.type.split("|")[0].strip()]


def add_pretrain_options(parser: argparse.ArgumentParser, config: type[Config] = PretrainConfig,
                         resume: bool = True) -> None:
    """The options of a training command: --config, --resume, --quiet, --devices and one per field of `config`."""
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="read options from a YAML file (keys as in a run's config.yaml); "
                             "command-line options override it")
    if resume:
        parser.add_argument("--resume", action="store_true",
                            help="continue the run in --out from its last checkpoint, with its saved settings")
    else:
        parser.set_defaults(resume=False)
    add_quiet(parser)
    parser.add_argument("--devices", type=int, default=1, metavar="N",
                        help="train with N processes on this machine, one per GPU (N CPU processes without GPUs), "
                             "launched by torchrun; --batch-size stays the global batch. For several machines run "
                             "torchrun yourself (docs: multi-gpu.md) (default: 1)")
    for f in config.fields():
        kind = _type_of(f)
        help_text = field_help(f) + ("" if kind is dict or f.default is None else f" (default: {f.default})")
        if f.metadata.get("switch"):  # --compile [auto|true|false] (bare: true), --no-compile
            flag = f.name.replace("_", "-")
            parser.add_argument("--" + flag, dest=f.name, nargs="?", const="true", default=argparse.SUPPRESS,
                                choices=f.metadata["choices"], help=help_text)
            parser.add_argument("--no-" + flag, dest=f.name, action="store_const", const="false",
                                default=argparse.SUPPRESS, help=f"same as --{flag} false")
        elif kind is dict:
            parser.add_argument(DICT_OPTIONS[f.name], dest=f.name, action="append", default=argparse.SUPPRESS,
                                metavar="KEY=VALUE", help=field_help(f) + "; repeat for several")
        elif kind is bool:
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, default=argparse.SUPPRESS,
                                action=BoolOption, help=help_text)
        else:
            parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=kind, default=argparse.SUPPRESS,
                                choices=f.metadata.get("choices"), metavar=f.name.upper() if kind is not str else None,
                                help=help_text)


def _registry_names() -> dict[str, str]:
    """The lists a help text names, read from the registries, so a new method or pipeline shows up by itself."""
    from pretrain.methods import METHODS
    from pretrain.views.gpu import SUPPORTED
    from pretrain.views.recipes import TRANSFORMS

    return {"{pipelines}": ", ".join(sorted(TRANSFORMS)), "{gpu_pipelines}": ", ".join(SUPPORTED),
            "{per_image_methods}": ", ".join(sorted(c.name for c in METHODS if not c.couples_batch)),
            "{batch_methods}": ", ".join(sorted(c.name for c in METHODS if c.couples_batch))}


def field_help(f: dataclasses.Field) -> str:
    """A config field's help text, with the registry lists it names ({pipelines}, ...) filled in."""
    text = f.metadata["help"]
    if "{" in text:
        for key, value in _registry_names().items():
            text = text.replace(key, value)
    return text


def config_from_args(args: argparse.Namespace, config: type[Config] = PretrainConfig) -> tuple[Config, bool]:
    """Merge defaults < --config file (or the run's saved config on --resume) < explicit options."""
    from pretrain.train.runconfig import load_run_config

    explicit = {f.name: getattr(args, f.name) for f in config.fields() if hasattr(args, f.name)}
    for name, option in DICT_OPTIONS.items():
        if name in explicit:
            explicit[name] = parse_key_values(explicit[name], option)
    values: dict = {}
    if args.resume:
        values = load_run_config(explicit.get("out") or "")
    elif args.config:
        values = load_yaml(args.config)
    for name in DICT_OPTIONS:
        if name in explicit:
            explicit[name] = {**values.get(name, {}), **explicit[name]}
    return config.from_dict({**values, **explicit}, source=args.config or "options"), args.resume


class Launched(SystemExit):
    """`--devices N` ran the command in N processes; carries their exit status."""


def launch_devices(args: argparse.Namespace, cfg: PretrainConfig) -> None:
    """Re-run this command line without --devices in `args.devices` processes started by torchrun."""
    import torch

    from pretrain.ground import distributed

    if args.devices < 1:
        raise ConfigError(f"--devices must be >= 1 (got {args.devices})")
    if cfg.batch_size and cfg.batch_size % (args.devices * cfg.accumulate):
        raise ConfigError(f"batch_size {cfg.batch_size} must be divisible by devices x accumulate = {args.devices} x "
                          f"{cfg.accumulate}: each process takes batch/{args.devices} images per step")
    if distributed.launched():
        raise ConfigError("--devices N starts its own processes: drop it when running under torchrun")
    gpus = torch.cuda.device_count()
    if gpus and args.devices > gpus:
        raise ConfigError(f"--devices {args.devices}: only {gpus} GPUs are visible here")
    argv = list(args.argv)
    for i, item in enumerate(argv):
        if item == "--devices":
            del argv[i:i + 2]
            break
        if item.startswith("--devices="):
            del argv[i]
            break
    raise Launched(distributed.launch(args.devices, "pretrain", argv))  # `python -m pretrain` is `sslforge`
