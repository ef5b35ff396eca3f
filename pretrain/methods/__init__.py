"""The method registry: `--method NAME` -> class, default views and recipes (optimizer, lr, hyper-parameters).

Adding a method is one file in this folder (the class names itself and states its default views and recipes)
and one entry in METHODS.
"""
from __future__ import annotations

import importlib
import inspect

from torch import nn

from pretrain.ground.errors import ConfigError
from pretrain.methods.base import Method

# The registry: one line per method, its module in this folder; the class there names itself, its default views
# and its recipes. The order is the order of the seed documents, then the modern methods.
MODULES = (
    "npid",
    "pirl",
    "cpc",
    "drlim",
    "deepcluster",
    "sela",
    "simclr",
    "simclr2",
    "distill",
    "moco",
    "byol",
    "simsiam",
    "swav",
    "barlowtwins",
    "vicreg",
    "vicregl",
    "dino",
    "nnclr",
    "distill_features",
    "mae",
)


def _method_in(module: str) -> type[Method]:
    """The one Method subclass `module` defines with a name of its own."""
    mod = importlib.import_module(f"pretrain.methods.{module}")
    found = [c for c in vars(mod).values() if isinstance(c, type) and issubclass(c, Method) and c.__module__ ==
             mod.__name__ and c.name]
    if len(found) != 1:
        raise ImportError(f"pretrain/methods/{module}.py must define one Method subclass with a `name` "
                          f"(found {len(found)})")
    return found[0]


METHODS: list[type[Method]] = [_method_in(m) for m in MODULES]
BY_NAME: dict[str, type[Method]] = {cls.name: cls for cls in METHODS}
if len(BY_NAME) != len(METHODS):
    raise ImportError("two methods share a name: " + ", ".join(c.name for c in METHODS))


def method_names() -> list[str]:
    return sorted(BY_NAME)


def method_class(name: str) -> type[Method]:
    """The class `--method NAME` selects (its recipes: `.recipe(NAME)`, its views: `.default_views`)."""
    if name not in BY_NAME:
        raise ConfigError(f"method must be one of {', '.join(method_names())} (got {name!r})")
    return BY_NAME[name]


# constructor arguments the trainer fills in from the data (not hyper-parameters: not in configs or tables)
DATA_ARGS = ("num_images",)


def _as_class(method: str | type[Method]) -> type[Method]:
    return method_class(method) if isinstance(method, str) else method


def method_hparams(method: str | type[Method], overrides: dict | None = None, recipe: str = "default") -> dict:
    """The method's hyper-parameters: its constructor defaults, then the recipe's, then `overrides` (checked)."""
    cls = _as_class(method)
    params = inspect.signature(cls.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k not in ("self", "backbone", "feature_dim", *DATA_ARGS)}
    for key in overrides or {}:
        if key not in defaults:
            raise ConfigError(f"method {cls.name} has no option {key!r}; its options are {', '.join(defaults)}")
    return {**defaults, **cls.recipe(recipe).method_args, **(overrides or {})}


def build_method(method: str | type[Method], backbone: nn.Module, feature_dim: int, hparams: dict,
                 num_images: int | None = None) -> Method:
    """The method (a name, or the class a resolved run holds); `num_images` (the training set's size) goes to
    methods with per-image state (a memory bank)."""
    cls = _as_class(method)
    name = cls.name
    param = inspect.signature(cls.__init__).parameters.get("num_images")
    data = {"num_images": num_images} if param is not None else {}
    if param is not None and param.default is inspect.Parameter.empty and num_images is None:
        raise ConfigError(f"method {name} keeps per-image state: build it with the training set's num_images")
    try:
        return cls(backbone, feature_dim, **hparams, **data)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"method {name}: {e}") from None


def recipe_table(recipe: str = "default") -> str:
    """`sslforge methods`: one Markdown row per method with the recipe's optimisation and every hyper-parameter
    (those the recipe sets instead of the paper's constructor default are marked *)."""
    rows = ["| method | views | optimizer | lr (per 256) | weight decay | hyper-parameters | source |",
            "|---|---|---|---|---|---|---|"]
    for name in method_names():
        cls = method_class(name)
        r = cls.recipe(recipe)
        hp = method_hparams(name, recipe=recipe)
        params = ", ".join(f"{k}={v}{'*' if k in r.method_args else ''}" for k, v in hp.items())
        views = cls.default_views + "".join(f" {k}={v}*" for k, v in r.transform_args.items())
        rows.append(f"| {name} | {views} | {r.optimizer} | {r.lr:g} | {r.weight_decay:g} | {params} | {r.source} |")
    return "\n".join(rows)
