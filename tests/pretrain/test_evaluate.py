from pathlib import Path

import numpy as np
import pytest
import torch

from pretrain.data.images import scan_images
from pretrain.ground.modeldir import load_model_dir
from pretrain.ground.preprocess import Preprocessing
from pretrain.train.evaluate import (
    Features,
    cached_features,
    extract_features,
    fold_standardization,
    knn_evaluate,
    knn_scores,
    linear_probe,
)


def knn_reference(bank: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int, t: float, c: int) -> np.ndarray:
    """Brute force, one query at a time, in float64."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    out = np.zeros((len(queries), c))
    for i, q in enumerate(queries):
        sims = bank @ (q / np.linalg.norm(q))
        for j in np.argsort(-sims)[:k]:
            out[i, labels[j]] += np.exp(sims[j] / t)
    return out


def test_knn_scores_match_brute_force() -> None:
    rng = np.random.default_rng(0)
    bank, labels, queries = rng.normal(size=(300, 16)), rng.integers(0, 5, 300), rng.normal(size=(40, 16))
    ours = knn_scores(torch.tensor(bank, dtype=torch.float32), torch.tensor(labels), torch.tensor(queries,
                      dtype=torch.float32), num_classes=5, k=20, temperature=0.1, chunk=7)
    np.testing.assert_allclose(ours.numpy(), knn_reference(bank, labels, queries, 20, 0.1, 5), rtol=1e-4)


def test_knn_on_a_toy_set_with_known_answer() -> None:
    # Three labelled directions; each query sits next to one of them.
    bank = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1.0, 0], [0, 0.9, 0.1], [0, 0, 1.0], [0.1, 0, 0.9]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    queries = torch.tensor([[0.95, 0.05, 0], [0, 0.2, 0.8], [0.1, 1.0, 0.0]])
    result = knn_evaluate(Features(bank, labels), Features(queries, torch.tensor([0, 2, 1])), 3, k=2, temperature=0.1)
    assert result == {"top1": 1.0, "top5": 1.0}
    wrong = knn_evaluate(Features(bank, labels), Features(queries, torch.tensor([1, 0, 2])), 3, k=2)
    assert wrong["top1"] == 0.0


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "lbfgs"])
def test_linear_probe_learns_separable_classes(optimizer: str) -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 8, generator=g) * 4 + 10  # far from zero mean: standardisation matters
    make = lambda n: (centers.repeat(n, 1) + torch.randn(4 * n, 8, generator=g), torch.arange(4).repeat(n))  # noqa: E731
    (xtr, ytr), (xte, yte) = make(50), make(20)
    result = linear_probe(Features(xtr, ytr), Features(xte, yte), 4, epochs=30, batch_size=32, lr=0.05,
                          optimizer=optimizer, progress=False)
    assert result.metrics["top1"] > 0.95
    assert result.head(xte).argmax(1).eq(yte).float().mean() == pytest.approx(result.metrics["top1"])


def test_folded_head_equals_standardise_then_linear() -> None:
    layer = torch.nn.Linear(5, 3)
    mean, std = torch.randn(5), torch.rand(5) + 0.5
    x = torch.randn(10, 5)
    torch.testing.assert_close(fold_standardization(layer, mean, std)(x), layer((x - mean) / std))


def test_features_are_cached_by_model_and_folder(image_folder: Path, tiny_run: Path) -> None:
    model = load_model_dir(tiny_run)
    images = scan_images(image_folder)
    first = cached_features(model, images, workers=0, progress=False)
    assert len(list((model.path / "cache").iterdir())) == 1
    again = cached_features(model, images, workers=0, progress=False)
    torch.testing.assert_close(first.features, again.features)
    direct = extract_features(model.load_backbone(), images, model.preprocessing, workers=0, progress=False)
    torch.testing.assert_close(first.features, direct.features)
    assert first.features.shape == (24, model.embedding_dim) and first.labels.tolist() == images.labels
    (image_folder / "class_0" / "000.jpg").unlink()
    assert len(cached_features(model, scan_images(image_folder), workers=0, progress=False).labels) == 23


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_a_bad_features_cache_is_recomputed_in_one_warning_line(image_folder: Path, tiny_run: Path, capsys) -> None:
    """A cache file someone else wrote (a pickle with code in it, garbage, or tensors of the wrong shape) is never
    executed: one warning line, then the features are recomputed and the file rewritten."""
    import pickle
    import warnings

    model = load_model_dir(tiny_run)
    images = scan_images(image_folder)
    good = cached_features(model, images, workers=0, progress=False)
    [cache] = (model.path / "cache").iterdir()
    for content in ("pickle", "garbage", "wrong shapes"):
        if content == "pickle":
            cache.write_bytes(pickle.dumps({"features": Payload(), "labels": 1, "failed": 0}))
        elif content == "garbage":
            cache.write_bytes(b"\x00not a torch file")
        else:
            torch.save({"features": torch.zeros(3, 2), "labels": torch.zeros(3, dtype=torch.long), "failed": 0}, cache)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            again = cached_features(model, images, workers=0, progress=False)
        ours = [str(w.message) for w in caught if "features cache" in str(w.message)]
        assert len(ours) == 1 and "\n" not in ours[0] and "; recomputing the features" in ours[0], (content, ours)
        assert "code ran" not in capsys.readouterr().out
        torch.testing.assert_close(again.features, good.features)
        torch.testing.assert_close(cached_features(model, images, workers=0, progress=False).features, good.features)


def test_preprocessing_round_trips_and_resizes() -> None:
    pre = Preprocessing.for_size(224)
    assert (pre.resize, pre.crop) == (256, 224)
    assert Preprocessing.from_dict(pre.to_dict()) == pre
    from PIL import Image

    assert pre(Image.new("RGB", (640, 480))).shape == (3, 224, 224)


def test_images_that_fail_to_decode_are_left_out_and_reported(image_folder: Path, tiny_run: Path) -> None:
    truncated = image_folder / "class_2" / "007.jpg"
    truncated.write_bytes(truncated.read_bytes()[:-200])
    model = load_model_dir(tiny_run)
    with pytest.warns(UserWarning, match=r"1 images failed to decode and were left out \(first: .*007.jpg\)"):
        features = extract_features(model.load_backbone(), scan_images(image_folder), model.preprocessing,
                                    workers=0, progress=False)
    assert features.failed == 1 and len(features.labels) == 23
