"""The benchmark grid end to end on a tiny folder: cells, resume, skip, CSV, Markdown, plots."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from shared_helpers import write_image_folder

from pretrain.data.images import scan_images
from pretrain.ground.errors import ConfigError
from pretrain.ground.modeldir import load_model_dir
from pretrain.study.cell import run_cell
from pretrain.study.grid import Grid, Variant, grid_eta, prepare_cell, run_grid
from pretrain.study.report import FIELDS, parse_markdown, read_results, render_markdown
from pretrain.train.evaluate import cached_features, knn_evaluate
from pretrain.train.trainer import Trainer


def tiny_grid(tmp_path: Path, **changes) -> Grid:
    train = write_image_folder(tmp_path / "data" / "train", per_class=8)
    test = write_image_folder(tmp_path / "data" / "test", per_class=4, seed=1)
    values = {"methods": ["simclr:out_dim=16", "vicreg:proj_dim=32"], "transforms": ["baseline", "simclr"],
              "datasets": [{"name": "tiny", "train": str(train), "test": str(test)}], "out": str(tmp_path / "grid"),
              "backbone": "test_resnet", "epochs": 1, "batch_size": 8, "image_size": 32, "seed": 1,
              "pretrain": {"workers": 0, "optimizer": "sgd", "lr": 0.5, "checkpoint_every_steps": 1},
              "linear": {"epochs": 5}, "knn": {"k": 5}}
    return Grid.from_dict({**values, **changes})


class Interrupt(Exception):
    pass


def _interrupt_at(step: int):
    def on_step(s: int) -> None:
        if s == step:
            raise Interrupt

    return on_step


def test_grid_runs_resumes_skips_and_tables_parse_back(tmp_path: Path) -> None:
    grid = tiny_grid(tmp_path)
    cells = grid.cells()
    assert [(c.method.label, c.transform.label) for c in cells] == [
        ("simclr:out_dim=16", "baseline"), ("simclr:out_dim=16", "simclr"),
        ("vicreg:proj_dim=32", "baseline"), ("vicreg:proj_dim=32", "simclr")]
    # An interrupted cell: one of its 3 steps done and checkpointed, as a killed grid would leave it.
    partial = cells[1]
    with pytest.raises(Interrupt):
        Trainer(partial.pretrain_config(grid), progress=False, on_step=_interrupt_at(1)).fit()
    assert partial.state() == "partial"

    lines: list[str] = []
    first = run_grid(grid, progress=False, log=lines.append)
    assert len(first.ran) == 4 and not first.failed and not first.skipped
    assert any(f"{partial.name} (partial)" in line for line in lines)
    assert json.loads((partial.out / "model.json").read_text())["training"]["steps"] == 3

    out = Path(grid.out)
    rows = read_results(out / "results.csv")
    assert list(rows[0]) == FIELDS
    assert [(r["method"], r["transform"]) for r in rows] == [(c.method.label, c.transform.label) for c in cells]
    for r in rows:
        assert r["status"] == "ok" and r["dataset"] == "tiny" and r["memory_kind"] == "rss"
        assert r["pretrain_min"] > 0 and r["peak_memory_mb"] > 50 and r["images_per_s"] > 0
        assert r["train_images"] == 24 and r["test_images"] == 12 and r["steps"] == 3
        for k in ("linear_top1", "linear_top5", "knn_top1", "knn_top5"):
            assert 0 <= r[k] <= 1
    # kNN top-1 recomputed from the cell's model dir, outside the benchmark.
    r = rows[2]
    model = load_model_dir(r["model_dir"])
    train = cached_features(model, scan_images(tmp_path / "data" / "train"), workers=0, progress=False)
    test = cached_features(model, scan_images(tmp_path / "data" / "test"), workers=0, progress=False)
    assert knn_evaluate(train, test, 3, k=5)["top1"] == pytest.approx(r["knn_top1"])
    assert model.info["head"]["metrics"]["top1"] == pytest.approx(r["linear_top1"])

    # The Markdown tables hold the CSV's values (to their printed precision), best of each row in bold.
    parsed = parse_markdown((out / "results.md").read_text())
    assert {p["metric"] for p in parsed} == {"linear_top1", "linear_top5", "knn_top1"}
    assert len(parsed) == 3 * len(rows)
    by_cell = {(r["method"], r["transform"]): r for r in rows}
    for p in parsed:
        r = by_cell[(p["method"], p["transform"])]
        assert p["dataset"] == "tiny"
        assert p["accuracy"] == pytest.approx(r[p["metric"]], abs=5e-4)
        assert p["pretrain_min"] == pytest.approx(r["pretrain_min"], abs=5e-3)
        assert p["peak_memory_mb"] == pytest.approx(r["peak_memory_mb"], abs=0.5 if r["peak_memory_mb"] < 1024 else 6)
        row_best = max(by_cell[(p["method"], t.label)][p["metric"]] for t in grid.transforms)
        assert p["best"] == (r[p["metric"]] == row_best)
    for name in ("loss-tiny.png", "terms-tiny.png", "accuracy-vs-time-tiny.png"):
        with Image.open(out / "plots" / name) as im:
            assert im.size[0] > 300

    # Run again: everything is skipped, nothing is retrained.
    mtimes = {c.out: (c.out / "backbone.safetensors").stat().st_mtime_ns for c in cells}
    again = run_grid(grid, progress=False, log=lambda _: None)
    assert len(again.skipped) == 4 and not again.ran
    # A trained cell without its result (killed during evaluation) is evaluated again, not retrained.
    (cells[0].out / "result.json").unlink()
    assert cells[0].state() == "trained"
    assert run_cell(cells[0].out, progress=False)["knn_top1"] == pytest.approx(rows[0]["knn_top1"])
    assert {c.out: (c.out / "backbone.safetensors").stat().st_mtime_ns for c in cells} == mtimes

    # Changing the grid's settings for the same folder is refused instead of mixing results.
    with pytest.raises(ConfigError, match="other pretrain settings"):
        prepare_cell(tiny_grid(tmp_path, epochs=2).cells()[0], tiny_grid(tmp_path, epochs=2))

    # A grid folder moved elsewhere is the same grid: nothing is retrained, the records follow the cells, and a
    # moved cell whose evaluation was cut is evaluated where it is now.
    shutil.move(out, tmp_path / "moved")
    moved = tiny_grid(tmp_path, out=str(tmp_path / "moved"))
    (moved.cells()[1].out / "result.json").unlink()
    after_move = run_grid(moved, progress=False, log=lambda _: None)
    # (cells[0] lost its result.json above too: run_cell returns the result, its process writes it)
    assert len(after_move.skipped) == 2 and [c.name for c in after_move.ran] == [cells[0].name, cells[1].name]
    moved_rows = read_results(tmp_path / "moved" / "results.csv")
    assert [r["model_dir"] for r in moved_rows] == [str(c.out) for c in moved.cells()]
    for before, now in zip(rows, moved_rows):
        assert now["knn_top1"] == pytest.approx(before["knn_top1"])
    for before_move, cell in zip(cells, moved.cells()):
        assert json.loads((cell.out / "cell.json").read_text())["pretrain"]["out"] == str(cell.out)
        assert (cell.out / "backbone.safetensors").stat().st_mtime_ns == mtimes[before_move.out]


def test_a_cell_the_method_cannot_run_is_recorded_and_shown_as_na(tmp_path: Path) -> None:
    grid = tiny_grid(tmp_path, methods=["vicregl"], transforms=["baseline"])
    cell = grid.cells()[0]
    prepare_cell(cell, grid)
    result = run_cell(cell.out, progress=False)
    assert result["status"] == "not run" and "boxes" in result["reason"]
    row = {k: result.get(k) for k in FIELDS}
    text = render_markdown([row], grid)
    assert "| vicregl | n/a |" in text and "vicregl x baseline: not run:" in text
    assert parse_markdown(text) == []


def test_a_grid_can_fine_tune_every_cell_and_tabulates_it(tmp_path: Path) -> None:
    grid = tiny_grid(tmp_path, methods=["simclr:out_dim=16"], transforms=["simclr"], eval=["knn", "finetune"],
                     finetune={"label_fraction": 0.5, "epochs": 1, "batch_size": 4, "lr": 0.5})
    cell = grid.cells()[0]
    prepare_cell(cell, grid)
    result = run_cell(cell.out, progress=False)
    tuned = load_model_dir(cell.out / "finetune")
    assert result["status"] == "ok" and result["linear_top1"] is None and 0 <= result["knn_top1"] <= 1
    assert result["finetune_top1"] == tuned.info["head"]["metrics"]["top1"]
    assert tuned.info["method"]["source"]["fingerprint"] == load_model_dir(cell.out).fingerprint
    assert tuned.info["method"]["labelled_images"] == 12 and tuned.info["head"]["metrics"]["images"] == 12
    text = render_markdown([{k: result.get(k) for k in FIELDS}], grid)
    assert {p["metric"] for p in parse_markdown(text)} == {"knn_top1", "finetune_top1"}
    stamp = (cell.out / "finetune" / "model.json").stat().st_mtime_ns
    assert run_cell(cell.out, progress=False)["finetune_top1"] == result["finetune_top1"]  # evaluated once
    assert (cell.out / "finetune" / "model.json").stat().st_mtime_ns == stamp
    with pytest.raises(ConfigError, match="finetune: unknown option 'model'"):
        tiny_grid(tmp_path, eval=["finetune"], finetune={"model": "x"})
    assert "finetune" not in tiny_grid(tmp_path).cells()[0].spec(tiny_grid(tmp_path))  # older grids' cell.json


def test_variants_and_grid_errors(tmp_path: Path) -> None:
    v = Variant.parse("vicregl:alpha=0.75:local_weight=2", "method")
    assert v == Variant("vicregl", {"alpha": 0.75, "local_weight": 2})
    assert v.label == "vicregl:alpha=0.75:local_weight=2"
    assert v.slug == "vicregl_alpha-0.75_local_weight-2"
    assert Variant.parse({"name": "dcl", "args": {"k": 2}}, "transform").label == "dcl:k=2"
    with pytest.raises(ConfigError, match="NAME:KEY=VALUE"):
        Variant.parse("simclr:temperature", "method")
    with pytest.raises(ConfigError, match="no option 'alpha'"):
        tiny_grid(tmp_path, methods=["simclr:alpha=1"])
    with pytest.raises(ConfigError, match="transform must be one of"):
        tiny_grid(tmp_path, transforms=["nope"])
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        tiny_grid(tmp_path, epoch=3)
    with pytest.raises(ConfigError, match="set by the grid itself"):
        tiny_grid(tmp_path, pretrain={"epochs": 3})
    with pytest.raises(ConfigError, match="unknown option 'momentum'"):
        tiny_grid(tmp_path, linear={"momentum": 0.9})
    with pytest.raises(ConfigError, match="listed twice"):
        tiny_grid(tmp_path, transforms="simclr,simclr")
    with pytest.raises(ConfigError, match="does not exist"):
        tiny_grid(tmp_path, datasets=[{"train": str(tmp_path / "missing" / "train"), "test": str(tmp_path)}])
    with pytest.raises(ConfigError, match="'byol' is not one of the grid's methods"):
        tiny_grid(tmp_path, method_epochs={"byol": 2})
    with pytest.raises(ConfigError, match="whole number >= 1"):
        tiny_grid(tmp_path, method_epochs={"simclr": 0})


def test_method_epochs_gives_one_method_another_budget(tmp_path: Path) -> None:
    grid = tiny_grid(tmp_path, methods=["simclr:out_dim=16", "vicreg:proj_dim=32", "vicreg:proj_dim=64"],
                     method_epochs={"vicreg": 3, "vicreg:proj_dim=64": 5})
    epochs = {c.name: c.pretrain_config(grid).epochs for c in grid.cells()}
    assert {n.split(" x ")[0]: e for n, e in epochs.items()} == {"simclr:out_dim=16": 1, "vicreg:proj_dim=32": 3,
                                                                  "vicreg:proj_dim=64": 5}
    cells = grid.cells()
    for cell in cells:
        prepare_cell(cell, grid)
    assert json.loads((cells[2].out / "cell.json").read_text())["pretrain"]["epochs"] == 3
    # a cell run at one budget is not silently continued at another
    longer = tiny_grid(tmp_path, methods=["simclr:out_dim=16"], method_epochs={"simclr": 2})
    with pytest.raises(ConfigError, match="other pretrain settings"):
        prepare_cell(longer.cells()[0], longer)
    unchanged = tiny_grid(tmp_path, methods=["simclr:out_dim=16"])
    prepare_cell(unchanged.cells()[0], unchanged)  # no entry: the grid's epochs, the same cell.json
    assert "epochs 1 (vicreg 3, vicreg:proj_dim=64 5), batch 8" in render_markdown([], grid)
    assert "epochs 1, batch 8" in render_markdown([], unchanged)


def test_the_eta_weighs_cells_by_their_epochs_and_ignores_resumed_ones() -> None:
    assert grid_eta([], [24, 48], [], 1) is None  # only resumed cells so far: no rate to go by
    # 20 s and 30 s an epoch -> 25 s; waiting 24 + 48 epochs; a running 48-epoch cell 600 s in; one over its time
    assert grid_eta([20.0, 30.0], [24, 48], [(48, 600.0), (24, 900.0)], 1) == pytest.approx(25 * 72 + 25 * 48 - 600)
    assert grid_eta([25.0], [24, 24], [], 2) == pytest.approx(25 * 48 / 2)


def test_benchmark_command_merges_the_grid_file_and_options(tmp_path: Path, monkeypatch, capsys) -> None:
    import pretrain.study.grid as benchmark
    from pretrain.cli import main
    from pretrain.study.grid import GridRun

    train = write_image_folder(tmp_path / "d" / "train", per_class=2)
    test = write_image_folder(tmp_path / "d" / "test", per_class=2)
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text("methods: [simclr, 'vicregl:alpha=0.25']\ntransforms: [baseline]\nepochs: 5\n"
                         f"out: {tmp_path / 'g'}\npretrain: {{max_images: 4}}\n")
    seen = []
    monkeypatch.setattr(benchmark, "run_grid", lambda grid, progress: seen.append(grid) or GridRun())
    assert main(["benchmark", "--grid", str(grid_file), "--data", str(train), "--test", str(test), "--epochs", "2",
                 "--transforms", "simclr,dcl:k=2", "--set", "workers=0", "--eval", "knn", "--knn-arg", "k=3",
                 "--method-epochs", "vicregl:alpha=0.25=7"]) == 0
    grid = seen[0]
    assert [m.label for m in grid.methods] == ["simclr", "vicregl:alpha=0.25"]
    assert [t.label for t in grid.transforms] == ["simclr", "dcl:k=2"]
    assert grid.epochs == 2 and grid.eval == ["knn"] and grid.knn == {"k": 3}
    assert grid.method_epochs == {"vicregl:alpha=0.25": 7} and grid.epochs_of(grid.methods[1]) == 7
    assert grid.pretrain == {"max_images": 4, "workers": 0} and grid.datasets[0].name == "d"
    assert main(["benchmark", "--methods", "nope", "--transforms", "simclr", "--data", str(train), "--test",
                 str(test), "--out", str(tmp_path / "x")]) == 2
    assert "method must be one of" in capsys.readouterr().err
    assert main(["benchmark", "--grid", str(grid_file), "--data", str(train), "--test", str(test),
                 "--method-epochs", "simclr"]) == 2
    assert "--method-epochs expects METHOD=EPOCHS" in capsys.readouterr().err


def test_one_cell_per_gpu_when_several_are_visible(monkeypatch) -> None:
    import torch

    from pretrain.study.grid import gpu_slots

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    assert gpu_slots("auto") == ["0", "1", "2"] and gpu_slots("cpu") == [None]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert gpu_slots("cuda") == [None]
