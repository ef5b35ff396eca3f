"""The pretraining configuration: one dataclass that is the CLI, the YAML file and the saved run config.

Each field carries its own help text, so `sslforge pretrain --help`, the YAML keys and the saved
`config.yaml` can never drift apart. Precedence: defaults < --config FILE.yaml < command-line options.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pretrain.ground.atomic import write_text
from pretrain.ground.cliargs import DEVICES
from pretrain.ground.errors import ConfigError

RECIPES = ("default", "paper")  # the optimisation recipes every method has (pretrain/methods/__init__.py)
SWITCH = ("auto", "true", "false")  # a setting with an automatic default: `--x [auto|true|false]`, `--no-x`
COMPILE_HELP = ("compile the networks with torch.compile: auto = when the planned steps repay its one-off start-up "
                "(the break-even in pretrain/train/speed.py, docs/benchmarks/profile.md), true (--compile) = always, "
                "false (--no-compile) = never; compiled code is cached across runs; if compiling fails the run "
                "says so in one line and goes on without it; on a CPU it needs a C++ compiler (g++)")


def _opt(default: Any, help: str, **meta: Any) -> Any:
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


class Config:
    """What every command's config dataclass shares: reading a dict (YAML, the saved config.yaml), writing one,
    and the type and choice checks of every field (each field's metadata carries its help and choices)."""

    def __post_init__(self) -> None:
        for f in self.fields():  # a switch (auto|true|false) read from YAML or an old saved config as a bool
            if f.metadata.get("switch") and isinstance(getattr(self, f.name), bool):
                setattr(self, f.name, str(getattr(self, f.name)).lower())
        self.validate()

    @classmethod
    def fields(cls) -> tuple[dataclasses.Field, ...]:
        return dataclasses.fields(cls)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config"):
        known = {f.name for f in cls.fields()}
        values = {k.replace("-", "_"): v for k, v in values.items()}
        for key in values:
            if key not in known:
                hint = difflib.get_close_matches(key, known, n=1)
                suggestion = f" (did you mean '{hint[0]}'?)" if hint else ""
                raise ConfigError(f"{source}: unknown option '{key}'{suggestion}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        """Check types and choices; raise ConfigError naming the first bad field (subclasses add ranges)."""
        for f in self.fields():
            value = getattr(self, f.name)
            _check_type(f, value)
            choices = f.metadata.get("choices")
            if choices and value is not None and value not in choices:
                raise ConfigError(f"{f.name} must be one of {', '.join(choices)} (got {value!r})")

    def check_ranges(self, *, positive: tuple[str, ...] = (), positive_number: tuple[str, ...] = (),
                     non_negative: tuple[str, ...] = ()) -> None:
        """Integers >= 1, numbers > 0 and numbers >= 0 among the named fields (unset ones are skipped)."""
        for name in positive:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be a positive integer (got {value})")
        for name in positive_number:
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name} must be a positive number (got {value})")
        for name in non_negative:
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be zero or positive (got {value})")

    def check_device(self) -> None:
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps (got {self.device!r})")


@dataclass
class PretrainConfig(Config):
    method: str = _opt("simclr", "self-supervised method (see `sslforge methods`)")
    recipe: str = _opt("default", "what fills every optimisation option left unset (optimizer, lr, weight decay, "
                                  "method hyper-parameters; `sslforge methods` prints each): default = tuned "
                                  "for one device and batches of 64-512, paper = the paper's large-batch recipe",
                       choices=RECIPES)
    data: str | None = _opt(None, "training images: a folder with class sub-folders (labels used only for "
                                  "evaluation) or a flat folder of images; default: the bundled CIFAR-10 sample")
    out: str | None = _opt(None, "run folder to write (the model dir); default: runs/<method>-<backbone>")
    backbone: str | None = _opt(None, "backbone: any timm model name, a torchvision ResNet, or an explicit "
                                      "'timm/NAME' or 'torchvision/NAME'; default: the --init source's "
                                      "architecture, else resnet18")
    backbone_args: dict = _opt({}, "extra keyword arguments for the backbone constructor", metavar="KEY=VALUE")
    init: str | None = _opt(None, "starting weights of the backbone: a model dir, a .safetensors or PyTorch "
                                  "state-dict file, or timm:NAME (timm's pretrained weights, e.g. "
                                  "timm:resnet50.a1_in1k; from the network, else the local Hugging Face cache); "
                                  "its mean, std and input size become the defaults (docs/pretrained.md); "
                                  "default: random weights")
    init_strict: bool = _opt(True, "with --init: refuse weights whose names or shapes do not all match the backbone "
                                   "(the error lists them); false loads those that match and reports the rest")
    small_stem: bool | None = _opt(None, "replace the ResNet stem by a 3x3 stride-1 conv without max-pool "
                                         "(for 32-96 px inputs); default: on when --image-size <= 96")
    image_size: int | None = _opt(None, "training crop size in pixels; default: the images' median short "
                                          "side up to 224 (32 for CIFAR-10, 224 for photos)")
    epochs: int = _opt(100, "passes over the training images")
    batch_size: int = _opt(128, "images per optimizer step, over all processes (each image gives several views); "
                                "under torchrun each of N processes takes batch/N of them")
    max_images: int | None = _opt(None, "train on a fixed random subset of this many images (for budgets)")
    optimizer: str | None = _opt(None, "optimizer; default: the method's own", choices=("sgd", "adamw", "lars"))
    lr: float | None = _opt(None, "base learning rate, scaled by the global batch_size/256; default: the "
                                  "method's own")
    weight_decay: float | None = _opt(None, "weight decay (never applied to biases and norm layers); "
                                            "default: the method's own")
    momentum: float = _opt(0.9, "momentum of SGD and LARS")
    warmup_epochs: float | None = _opt(None, "linear warm-up length before the cosine decay; "
                                             "default: min(10, epochs/10)")
    grad_clip: float | None = _opt(None, "clip the gradient norm to this value (off by default)")
    transform: str | None = _opt(None, "view augmentation pipeline: {pipelines}; default: the method's own "
                                       "(`sslforge methods`)")
    transform_args: dict = _opt({}, "options of the augmentation pipeline", metavar="KEY=VALUE")
    method_args: dict = _opt({}, "hyper-parameters of the method (e.g. temperature=0.2)", metavar="KEY=VALUE")
    gpu_augment: bool = _opt(False, "make the views on the training device (GPU when present), batched, from "
                                    "uint8 images the loader only decodes and resizes; transforms "
                                    "{gpu_pipelines}")
    gpu_load_size: int | None = _opt(None, "with --gpu-augment: side of the square uint8 images the loader yields "
                                           "(views are cropped from them); default: the image size up to 64 px, "
                                           "image size / 0.875 above (256 for 224)")
    precision: str = _opt("auto", "numeric precision: auto = bf16 (or fp16) autocast on CUDA, fp32 on CPU",
                          choices=("auto", "fp32", "bf16", "fp16"))
    channels_last: bool = _opt(True, "use the channels-last memory layout (faster convolutions on CPU and GPU)")
    compile: str = _opt("auto", COMPILE_HELP, choices=SWITCH, switch=True)
    threads: int | None = _opt(None, "intra-op threads of the training process; default: from the cores, split "
                                     "with --workers (a CPU run: every core; a GPU run: the cores the workers "
                                     "leave)")
    sync_every: int | None = _opt(None, "read the loss back from the device every N steps (a read waits for the "
                                        "device; metrics.csv still gets every step, and a NaN loss stops the run "
                                        "within N steps, before any checkpoint); default: 1 on a CPU, 10 on a GPU")
    device: str = _opt("auto", DEVICES)
    workers: int | None = _opt(None, "data-loading worker processes; default: the number of CPU cores (max 8)")
    seed: int = _opt(0, "random seed: the same seed and settings give the same run")
    accumulate: int = _opt(1, "gradient accumulation: each process runs its share of a batch in this many "
                              "micro-batches before the optimizer step. Exact for per-image losses "
                              "({per_image_methods}); losses with in-batch negatives or batch statistics "
                              "({batch_methods}) and every batch norm see only the micro-batch")
    sync_bn: bool = _opt(False, "under torchrun: batch norms compute their statistics over the global batch "
                                "(SyncBatchNorm on CUDA, an all-reduce on CPU)")
    checkpoint_every: int = _opt(1, "write checkpoint.pt every N epochs")
    checkpoint_every_steps: int | None = _opt(None, "also write checkpoint.pt every N optimizer steps")
    knn_every: int = _opt(0, "online kNN evaluation every N epochs (0 = off); needs labelled --data")
    knn_test: str | None = _opt(None, "labelled test folder for the online kNN; default: the bundled sample's "
                                      "test split when training on the sample")
    knn_k: int = _opt(200, "neighbours of the kNN evaluation")
    knn_temperature: float = _opt(0.1, "temperature of the kNN vote weights exp(similarity / T)")

    def validate(self) -> None:
        """Check types and ranges; raise ConfigError naming the first bad field."""
        super().validate()
        self.check_ranges(positive=("epochs", "batch_size", "accumulate", "checkpoint_every", "knn_k", "image_size",
                                    "max_images", "checkpoint_every_steps", "gpu_load_size", "threads",
                                    "sync_every"),
                          positive_number=("lr", "knn_temperature", "grad_clip"),
                          non_negative=("weight_decay", "warmup_epochs", "momentum", "knn_every", "workers"))
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"image_size must be at least 16 pixels (got {self.image_size})")
        if self.gpu_load_size is not None and not self.gpu_augment:
            raise ConfigError("gpu_load_size applies only with gpu_augment: add --gpu-augment or drop --gpu-load-size")
        self.check_device()



FINETUNE_OPTIMIZERS = ("sgd", "adamw", "lars")


@dataclass
class FinetuneConfig(Config):
    """`sslforge finetune`: a model dir's backbone (or a fresh one) and a new linear classifier trained end to end
    on a class-balanced, seeded share of the labels. Defaults and how they were chosen: docs/benchmarks/fine-tuning.md,
    "Fine-tuning and semi-supervised learning"."""

    model: str | None = _opt(None, "model dir to fine-tune (written by `sslforge pretrain`); omit it, or give "
                                   "--from-scratch, for the supervised baseline")
    from_scratch: bool = _opt(False, "supervised baseline: the same training from randomly initialised --backbone "
                                     "weights (no --model)")
    train: str | None = _opt(None, "labelled training images: a folder with one sub-folder per class; default: the "
                                   "bundled CIFAR-10 sample's train split (and its test split as --test)")
    test: str | None = _opt(None, "labelled test images with the same class folders: top-1/top-5 at the end (and "
                                  "every --eval-every epochs), recorded in model.json")
    label_fraction: float | None = _opt(None, "train on this share of the labels (0.01 = 1%%), the same share of "
                                              "every class, picked by --seed; default: all of them (1.0)")
    labels_per_class: int | None = _opt(None, "train on N labelled images of every class instead of a fraction")
    from_head_layer: int | None = _opt(None, "fine-tune from this many of the head layers the model dir keeps "
                                             "(simclr2 keeps 1): 0 = the backbone alone, 1 = backbone + first head "
                                             "layer, SimCLRv2's choice; default: all the model dir keeps")
    out: str | None = _opt(None, "run folder to write: a model dir whose head is the fine-tuned classifier; "
                                 "default: runs/finetune-<model dir name>, or runs/supervised-<backbone>")
    backbone: str | None = _opt(None, "with --from-scratch: the backbone, as for `sslforge pretrain` (default: "
                                      "resnet18); with --model it is the model dir's")
    backbone_args: dict = _opt({}, "with --from-scratch: extra keyword arguments for the backbone constructor",
                               metavar="KEY=VALUE")
    init: str | None = _opt(None, "without --model: the backbone's starting weights instead of random ones, as for "
                                  "`sslforge pretrain --init` (a model dir, a .safetensors or PyTorch state-dict "
                                  "file, or timm:NAME); its mean, std and input size become the defaults")
    init_strict: bool = _opt(True, "with --init: refuse weights whose names or shapes do not all match the backbone; "
                                   "false loads those that match and reports the rest")
    small_stem: bool | None = _opt(None, "with --from-scratch: the small-image ResNet stem (default: on when "
                                         "--image-size <= 96)")
    image_size: int | None = _opt(None, "with --from-scratch: training crop size (default: the images' median "
                                        "short side up to 224); with --model it is the model dir's crop")
    epochs: int = _opt(60, "passes over the labelled images (SimCLRv2 fine-tunes 60 epochs on 1%% of ImageNet, "
                           "30 on 10%%)")
    batch_size: int | None = _opt(None, "labelled images per optimizer step, over all processes; default: 64, or "
                                        "the number of labelled images when there are fewer")
    optimizer: str = _opt("sgd", "optimizer (momentum SGD by default)", choices=FINETUNE_OPTIMIZERS)
    lr: float = _opt(0.1, "learning rate of the new classifier for a batch of 256 (scaled by batch/256), "
                          "warm-up then cosine decay")
    backbone_lr_scale: float | None = _opt(None, "the backbone (and kept head layers) train at this multiple of "
                                                 "--lr; default: 0.3 with --model (the pretrained features move "
                                                 "more slowly than the new classifier), 1 from scratch; 0 keeps "
                                                 "their weights fixed")
    weight_decay: float = _opt(5e-4, "weight decay (never on biases and norm layers)")
    momentum: float = _opt(0.9, "momentum of SGD and LARS")
    warmup_epochs: float = _opt(0.0, "linear warm-up before the cosine decay (SimCLRv2 fine-tunes without one)")
    grad_clip: float | None = _opt(None, "clip the gradient norm to this value (off by default)")
    label_smoothing: float = _opt(0.0, "label smoothing of the cross-entropy")
    min_scale: float = _opt(0.5, "light augmentation: random crops of this share of the image area up to all of it, "
                                 "resized to the image size (no colour changes)")
    hflip_p: float = _opt(0.5, "probability of a horizontal flip of each training crop")
    eval_every: int = _opt(0, "test top-1/top-5 every N epochs into eval.csv and TensorBoard (0 = only at the "
                              "end); needs --test")
    precision: str = _opt("auto", "numeric precision: auto = bf16 (or fp16) autocast on CUDA, fp32 on CPU",
                          choices=("auto", "fp32", "bf16", "fp16"))
    channels_last: bool = _opt(True, "use the channels-last memory layout")
    compile: str = _opt("auto", COMPILE_HELP, choices=SWITCH, switch=True)
    threads: int | None = _opt(None, "intra-op threads of the training process; default: from the cores, split "
                                     "with --workers")
    sync_every: int | None = _opt(None, "read the loss back from the device every N steps; default: 1 on a CPU, "
                                        "10 on a GPU")
    device: str = _opt("auto", DEVICES)
    workers: int | None = _opt(None, "data-loading worker processes; default: the number of CPU cores (max 8)")
    seed: int = _opt(0, "random seed: picks the labelled images, the initial classifier and the augmentation")
    accumulate: int = _opt(1, "gradient accumulation: each process runs its share of a batch in this many "
                              "micro-batches (exact for the loss; batch norms see only the micro-batch)")
    sync_bn: bool = _opt(False, "under torchrun: batch norms compute their statistics over the global batch")
    checkpoint_every: int = _opt(1, "write checkpoint.pt every N epochs")
    checkpoint_every_steps: int | None = _opt(None, "also write checkpoint.pt every N optimizer steps")

    def validate(self) -> None:
        super().validate()
        self.check_ranges(positive=("epochs", "batch_size", "accumulate", "checkpoint_every", "image_size",
                                    "checkpoint_every_steps", "labels_per_class", "threads", "sync_every"),
                          positive_number=("lr", "grad_clip"),
                          non_negative=("weight_decay", "warmup_epochs", "momentum", "eval_every", "workers",
                                        "backbone_lr_scale", "from_head_layer"))
        if self.label_fraction is not None and not 0 < self.label_fraction <= 1:
            raise ConfigError(f"label_fraction must be in (0, 1], e.g. 0.01 for 1% (got {self.label_fraction})")
        if self.label_fraction is not None and self.labels_per_class is not None:
            raise ConfigError("give label_fraction or labels_per_class, not both")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if not 0 <= self.hflip_p <= 1:
            raise ConfigError(f"hflip_p is a probability in [0, 1] (got {self.hflip_p})")
        if not 0 < self.min_scale <= 1:
            raise ConfigError(f"min_scale must be in (0, 1] (got {self.min_scale})")
        if self.image_size is not None and self.image_size < 16:
            raise ConfigError(f"image_size must be at least 16 pixels (got {self.image_size})")
        if self.model and self.from_scratch:
            raise ConfigError("--model and --from-scratch exclude each other: fine-tune a model dir, or train "
                              "--backbone from scratch")
        if self.init and (self.model or self.from_scratch):
            raise ConfigError(f"--init gives the starting weights of a new backbone: drop "
                              f"{'--model' if self.model else '--from-scratch'} (it starts from {self.init})")
        if self.model:
            given = [n for n in ("backbone", "small_stem", "image_size") if getattr(self, n) is not None]
            if given or self.backbone_args:
                raise ConfigError(f"{(given or ['backbone_args'])[0]} is the model dir's own when fine-tuning "
                                  f"--model {self.model}; drop it (or use --from-scratch)")
        elif self.from_head_layer:
            raise ConfigError("from_head_layer needs --model: a model dir that keeps head layers (simclr2)")
        self.check_device()

def _check_type(f: dataclasses.Field, value: Any) -> None:
    expected = f.type if isinstance(f.type, str) else str(f.type)
    optional = "None" in expected
    if value is None:
        if not optional:
            raise ConfigError(f"{f.name} must be set (got nothing)")
        return
    base = expected.split("|")[0].strip()
    ok = {
        "str": isinstance(value, str),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "bool": isinstance(value, bool),
        "dict": isinstance(value, dict),
    }[base]
    if not ok:
        raise ConfigError(f"{f.name} must be {_ARTICLE[base]} (got {value!r})")


_ARTICLE = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false",
            "dict": "a mapping of KEY: VALUE"}


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config file into a dict of options (keys as in `config.yaml`)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value")
    return values


def save_yaml(cfg: Config, path: str | os.PathLike) -> None:
    write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def parse_key_values(items: list[str], option: str) -> dict[str, Any]:
    """Parse repeated KEY=VALUE options; values are read as YAML scalars (0.2 -> float, true -> bool)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{option} expects KEY=VALUE (got {item!r})")
        out[key.strip().replace("-", "_")] = yaml.safe_load(raw) if raw else ""
    return out
