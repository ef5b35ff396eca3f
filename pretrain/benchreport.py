"""The import path earlier READMEs showed for the benchmark tables' reader; the module is now
`pretrain.study.report`."""
from pretrain.study.report import parse_markdown

__all__ = ["parse_markdown"]
