"""The equal-time script's contender files: one per spec, so two contenders never overwrite each other's results."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "equal_time_knn.py"
spec = importlib.util.spec_from_file_location("equal_time_knn", SCRIPT)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

LONG = "sslforge;optimizer=lars;lr=0.6;weight_decay=1.0e-6;transform=simclr;method_args={prototypes: 512, " \
       "proj_hidden_dim: 512, queue_length: 1920, queue_start_epoch: 1.0"


def test_specs_that_differ_only_past_the_cut_or_in_punctuation_get_their_own_files() -> None:
    a, b = LONG + "}", LONG + ", epsilon: 0.03}"
    assert bench.slug(a)[:100] == bench.slug(b)[:100]  # the readable part is the same ...
    assert bench.slug(a) != bench.slug(b)  # ... the names are not
    assert bench.slug("sslforge;lr=1") != bench.slug("sslforge lr=1")
    assert len(bench.slug(a)) <= 109
    # the readable part, then the first 8 hex digits of the spec's SHA-1 (`printf 'sslforge;lr=1' | sha1sum`)
    assert bench.slug("sslforge;lr=1") == "sslforge_lr=1-a0053d99" and bench.slug("lightly") == "lightly-cfdf4276"
    assert "/" not in bench.slug("sslforge;transform=../x")


def test_the_same_spec_twice_is_a_one_line_error(tmp_path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path), "--test", str(tmp_path),
                           "--out", str(tmp_path / "o"), "--contenders", "sslforge", "sslforge"],
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 2 and "the two specs are the same" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_batch_larger_than_the_images_is_a_one_line_error(tmp_path) -> None:
    from PIL import Image

    for cls in ("a", "b"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "d" / cls / f"{i}.png")

    def script(data: Path, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--test", str(tmp_path / "d"),
                               "--out", str(tmp_path / "o"), "--eval", "test", *extra], capture_output=True, text=True,
                              timeout=600,
                              cwd=ROOT)

    proc = script(tmp_path / "d", "--batch", "8")
    assert proc.returncode == 2 and "--batch 8 is larger than the 6 images of --data" in proc.stderr
    proc = script(tmp_path / "missing")
    assert proc.returncode == 2 and "--data:" in proc.stderr and "does not exist" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_recipe_that_cannot_be_built_and_a_missing_split_are_one_line_errors(tmp_path) -> None:
    from shared_helpers import write_image_folder

    data = write_image_folder(tmp_path / "d", per_class=8)

    def script(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(SCRIPT), "--data", str(data), "--out", str(tmp_path / "o"),
                               *extra], capture_output=True, text=True, timeout=600, cwd=ROOT)

    proc = script("--test", str(data))  # the curve scores validation by default
    assert proc.returncode == 2 and "--eval val needs --val" in proc.stderr and "--eval test" in proc.stderr
    proc = script("--val", str(data), "--batch", "16", "--contenders", "sslforge;lr=abc", "lightly")
    assert proc.returncode == 2 and "'sslforge;lr=abc': lr must be a number" in proc.stderr
    proc = script("--val", str(data), "--method", "moco", "--batch", "12")
    assert proc.returncode == 2 and "multiple of 8" in proc.stderr and "Traceback" not in proc.stderr
    proc = script("--val", str(data), "--batch", "16", "--seed", "1")
    assert proc.returncode == 2 and "--seeds" in proc.stderr
    assert not (tmp_path / "o").exists()
