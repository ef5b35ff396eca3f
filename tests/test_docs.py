"""The docs site: the generated reference pages match the code, and the site builds with --strict
(a dead link, a missing anchor, a page left out of the navigation fail here)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_reference_pages_match_the_code():
    run = subprocess.run([sys.executable, "tools/gen_docs.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_reference_check_catches_a_stale_page(tmp_path, monkeypatch):
    import tools.gen_docs as gen

    monkeypatch.setattr(gen, "REFERENCE", tmp_path)
    assert gen.main([]) == 0
    page = tmp_path / "methods.md"
    page.write_text(page.read_text().replace("| simclr |", "| simclr-by-hand |"))
    assert gen.main(["--check"]) == 1
    assert "simclr" in (tmp_path / "methods.md").read_text()


def test_every_method_and_pipeline_is_on_its_page():
    from pretrain.methods import method_names
    from pretrain.views.recipes import TRANSFORMS

    methods = (ROOT / "docs/reference/methods.md").read_text()
    pipelines = (ROOT / "docs/reference/pipelines.md").read_text()
    assert all(f"| {name} |" in methods for name in method_names())
    assert all(f"| `{name}` |" in pipelines for name in TRANSFORMS)


def test_site_builds_strict(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    run = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=ROOT,
                         capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (tmp_path / "site" / "benchmarks" / "learning" / "index.html").is_file()


def test_strict_build_fails_on_a_dead_link(tmp_path):
    import shutil

    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    shutil.copy(ROOT / "mkdocs.yml", tmp_path / "mkdocs.yml")
    with open(tmp_path / "docs" / "status.md", "a") as f:
        f.write("\n[gone](no-such-page.md)\n")
    mkdocs = Path(sys.executable).with_name("mkdocs")
    run = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=tmp_path,
                         capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert run.returncode != 0
    assert "no-such-page.md" in run.stdout + run.stderr


def test_help_lists_come_from_the_registries():
    from pretrain.cli import build_parser
    from pretrain.methods import METHODS
    from pretrain.views.gpu import SUPPORTED
    from pretrain.views.recipes import TRANSFORMS

    sub = next(a for a in build_parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    helps = {a.dest: a.help for a in sub.choices["pretrain"]._actions}
    assert all(name in helps["transform"] for name in TRANSFORMS)
    accumulate = helps["accumulate"]
    exact, coupled = accumulate.split("losses with in-batch negatives")
    for cls in METHODS:
        assert cls.name in (coupled if cls.couples_batch else exact), cls.name
    assert all(name in helps["gpu_augment"] for name in SUPPORTED)
    assert "{" not in "".join(h or "" for h in helps.values())
