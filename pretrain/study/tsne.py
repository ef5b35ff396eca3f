"""2-d t-SNE of embeddings (scikit-learn, the `benchmark` extra), as in seed 002's figure of test embeddings."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pretrain.ground.errors import ConfigError


def tsne_2d(features: torch.Tensor, *, perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """(N, D) features -> (N, 2) points. Rows are L2-normalised first (the embeddings are compared by cosine);
    the perplexity is capped below N, which t-SNE requires."""
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        raise ConfigError("t-SNE needs scikit-learn: pip install 'sslforge[benchmark]' (or scikit-learn)") from None
    x = F.normalize(features.float(), dim=1).numpy()
    if len(x) < 2:
        raise ConfigError(f"t-SNE needs at least 2 images (got {len(x)})")
    # Exact gradients up to 1,000 points: as fast as Barnes-Hut there, and no OpenMP spinning on a busy machine.
    tsne = TSNE(n_components=2, perplexity=min(perplexity, (len(x) - 1) / 3), init="pca", random_state=seed,
                method="exact" if len(x) <= 1000 else "barnes_hut")
    return tsne.fit_transform(x)
