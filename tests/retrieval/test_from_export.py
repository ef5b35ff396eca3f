"""The stages meet on disk: export's `sslforge embed` output, read by retrieval's own reader, indexed and searched."""
from pathlib import Path

import numpy as np
import torch

from export.embed import embed_images
from export.embedder import Embedder
from pretrain.ground.backbones import build_backbone, resolve_spec
from pretrain.ground.modeldir import load_model_dir, write_model_dir
from pretrain.ground.preprocess import Preprocessing
from retrieval.embeddings import read_embeddings
from retrieval.index import Index


def test_export_embeddings_are_read_indexed_and_searched_by_retrieval(image_folder: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = resolve_spec("test_resnet", None, 32)
    net, dim = build_backbone(spec, 32)
    write_model_dir(tmp_path / "model", net, spec=spec, embedding_dim=dim, preprocessing=Preprocessing.for_size(32),
                    method={"name": "none"}, training={})
    model = load_model_dir(tmp_path / "model")
    embedder = Embedder.load(model, backend="torch", device="cpu")
    embed_images(embedder, image_folder, tmp_path / "emb", batch_size=5, workers=0, shard_size=7, progress=False)

    emb = read_embeddings(tmp_path / "emb")  # retrieval's reader, not export's
    assert len(emb) == 24 and emb.dim == dim and emb.model_fingerprint == model.fingerprint
    assert sorted(set(emb.labels)) == ["class_0", "class_1", "class_2"]
    direct = embedder.embed([image_folder / p for p in emb.paths[:3]])
    np.testing.assert_allclose(emb.vectors[:3], direct, atol=1e-5)

    index = Index.build(emb.vectors, emb.paths, emb.labels, kind="flat")
    scores, ids, _ = index.search(emb.vectors[:4], k=1)
    assert ids[:, 0].tolist() == [0, 1, 2, 3] and np.allclose(scores[:, 0], 1.0, atol=1e-5)
