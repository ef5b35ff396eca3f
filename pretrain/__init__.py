"""sslforge pretraining: self-supervised methods, data, backbones, trainer, evaluation."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sslforge")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"
