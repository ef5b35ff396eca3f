"""bench/start_from.py at tiny settings: each study runs end to end and writes its JSON; the runs chain (the
continued run starts from the start model, the students are the student backbone, the teachers are reused)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from shared_helpers import write_image_folder

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("start_from", ROOT / "bench" / "start_from.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_the_three_studies_at_tiny_settings(tmp_path: Path) -> None:
    cifar = tmp_path / "cifar"
    write_image_folder(cifar / "train", per_class=16)
    write_image_folder(cifar / "test", per_class=4, seed=1)
    tiny = ["--cifar", str(cifar), "--out", str(tmp_path / "results"), "--runs", str(tmp_path / "runs"),
            "--minutes", "0.01", "--start-minutes", "0.01", "--mae-minutes", "0.01", "--backbone", "test_resnet",
            "--student", "test_resnet", "--vit", "test_vit", "--vit-arg", "patch_size=8", "--batch", "8",
            "--bank-images", "24", "--curve-test", "6", "--curve-every", "0.0001", "--probe-epochs", "3",
            "--workers", "0", "--device", "cpu", "--quiet"]
    for study in ("continued", "mae", "distill"):
        assert bench.main([study, *tiny]) == 0
    results = {s: json.loads((tmp_path / "results" / f"{s}.json").read_text()) for s in ("continued", "mae",
                                                                                            "distill")}
    c = results["continued"]
    for run in ("start", "continued", "from_random_init"):
        assert 0 <= c[run]["knn_top1"] <= 1 and c[run]["curve"], run
    assert c["continued_minus_start"] == c["continued"]["knn_top1"] - c["start"]["knn_top1"]
    continued = json.loads((Path(c["continued"]["model_dir"]) / "model.json").read_text())
    assert continued["init"]["source"] == c["start"]["model_dir"]
    assert json.loads((Path(c["from_random_init"]["model_dir"]) / "model.json").read_text())["init"] is None
    part_a, part_b = ({(q.parent.name, q.name) for q in (tmp_path / "runs" / part).rglob("*.jpg")}
                      for part in ("part-a", "part-b"))
    assert len(part_a) == len(part_b) == 24 and not part_a & part_b  # two disjoint halves of the 48 images

    m = results["mae"]
    assert "linear_top1" in m["mae"] and "linear_top1" in m["random_init"] and m["mae"]["curve"]
    assert m["knn_gain"] == m["mae"]["knn_top1"] - m["random_init"]["knn_top1"]

    d = results["distill"]
    assert d["teacher"]["model_dir"] == c["start"]["model_dir"]  # reused, not trained again
    assert d["vit_teacher"]["model_dir"] == m["mae"]["model_dir"]
    assert d["fraction_of_teacher"] == d["distilled"]["knn_top1"] / d["teacher"]["knn_top1"]
    student = json.loads((Path(d["distilled"]["model_dir"]) / "model.json").read_text())
    assert student["method"]["name"] == "distill_features" and student["backbone"]["name"] == "test_resnet"
    assert student["method"]["hparams"]["teacher"] == c["start"]["model_dir"]
    from_vit = json.loads((Path(d["distilled_from_vit"]["model_dir"]) / "model.json").read_text())
    assert from_vit["method"]["hparams"]["teacher"] == m["mae"]["model_dir"]


def test_vit_pooling_scores_the_class_token_as_the_backbone_embeds(tmp_path: Path) -> None:
    """bench/vit_pooling.py: its class-token pooling is the ViT's own embedding (the kNN of the mae study, for the
    trained ViT and its random init alike); the patch mean is scored beside it, and the JSON is written."""
    spec = importlib.util.spec_from_file_location("vit_pooling", ROOT / "bench" / "vit_pooling.py")
    pooling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pooling)
    cifar = tmp_path / "cifar"
    write_image_folder(cifar / "train", per_class=16)
    write_image_folder(cifar / "test", per_class=4, seed=1)
    assert bench.main(["mae", "--cifar", str(cifar), "--out", str(tmp_path / "results"), "--runs",
                       str(tmp_path / "runs"), "--mae-minutes", "0.01", "--vit", "test_vit", "--vit-arg",
                       "patch_size=8", "--batch", "8", "--bank-images", "24", "--curve-every", "0",
                       "--probe-epochs", "3", "--workers", "0", "--device", "cpu", "--quiet"]) == 0
    study = json.loads((tmp_path / "results" / "mae.json").read_text())
    out = tmp_path / "pooling.json"
    assert pooling.main([study["mae"]["model_dir"], "--data", str(cifar), "--out", str(out), "--bank-images", "24",
                         "--probe-epochs", "3", "--workers", "0"]) == 0
    result = json.loads(out.read_text())
    assert result["trained_cls"]["knn_top1"] == study["mae"]["knn_top1"]
    assert result["random_init_cls"]["knn_top1"] == study["random_init"]["knn_top1"]
    assert all(0 <= result[k]["knn_top1"] <= 1 for k in ("trained_avg", "random_init_avg"))
