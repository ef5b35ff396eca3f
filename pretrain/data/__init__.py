"""Training and evaluation data: image lists and folders (`images`), datasets and the epoch sampler
(`datasets`), dataset archives (`downloads`) and the loader workers' heap settings (`heap`).

`pretrain.data.load_rgb`, the path earlier READMEs showed, still imports; the module is `pretrain.data.images`.
"""
from pretrain.data.images import load_rgb

__all__ = ["load_rgb"]
