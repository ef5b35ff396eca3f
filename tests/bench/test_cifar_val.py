"""The validation split: disjoint from the bundled sample's training images (by name and by bytes), and fixed."""
from __future__ import annotations

import hashlib
import importlib.util
import io
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "cifar_val.py"
_spec = importlib.util.spec_from_file_location("cifar_val", SCRIPT)
cifar_val = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cifar_val)


def _archive(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _sample_train() -> dict[str, bytes]:
    with tarfile.open(cifar_val._bundled_sample()) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile() and m.name.startswith("train/")}


def test_the_split_holds_none_of_the_bundled_samples_training_images(tmp_path) -> None:
    sample = _sample_train()
    assert len(sample) == 5000  # the 5,000 images bench/equal_time_knn.py trains on (`sslforge sample`)
    # an archive with every sample image, 3 others a class, and one other that repeats a sample image's bytes
    extra = {f"train/{Path(n).parts[1]}/9{i}.jpg": f"{n}-{i}".encode() for n in sorted(sample)[::500]
             for i in range(3)}
    copy_of = sorted(sample)[0]
    extra[f"train/{Path(copy_of).parts[1]}/8000.jpg"] = sample[copy_of]
    archive = _archive(tmp_path / "cifar.tar.gz", {**sample, **extra, "test/cat/0000.jpg": b"t"})
    picked = cifar_val.pick(archive, per_class=3)
    names = {f"train/{cls}/{n}" for cls, files in picked.items() for n, _ in files}
    assert names == {n for n in extra if not n.endswith("8000.jpg")}  # the byte copy is left out too
    held = {hashlib.sha256(b).digest() for b in sample.values()}
    assert not any(hashlib.sha256(b).digest() in held for files in picked.values() for _, b in files)


def test_the_split_is_fixed_and_written_with_its_manifest(tmp_path) -> None:
    sample = _archive(tmp_path / "sample.tar.gz", {"train/a/0.jpg": b"s0", "train/b/0.jpg": b"s1"})
    files = {f"train/{c}/{i}.jpg": f"{c}{i}".encode() for c in "ab" for i in (3, 0, 2, 1)}
    archive = _archive(tmp_path / "cifar.tar.gz", files)
    runs = []
    for out in ("one", "two"):
        proc = subprocess.run([sys.executable, str(SCRIPT), str(archive), str(tmp_path / out), "--per-class", "2",
                               "--sample", str(sample)], capture_output=True, text=True, timeout=300, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        val = tmp_path / out / "val"
        runs.append((sorted(str(p.relative_to(val)) for p in val.rglob("*.jpg")),
                     (tmp_path / out / "val-manifest.txt").read_text(), proc.stdout.split()[-1]))
    assert runs[0] == runs[1]  # the same files, manifest and digest twice
    assert runs[0][0] == ["a/1.jpg", "a/2.jpg", "b/1.jpg", "b/2.jpg"]  # 0.jpg is the sample's; then by name
    lines = [f"{c}/{i}.jpg {hashlib.sha256(f'{c}{i}'.encode()).hexdigest()}" for c in "ab" for i in (1, 2)]
    body = "\n".join(lines) + "\n"
    digest = hashlib.sha256(body.encode()).hexdigest()
    assert runs[0][1] == body + f"# sha256 of the lines above: {digest}\n" and digest in runs[0][2]


def test_bad_input_is_a_one_line_error(tmp_path) -> None:
    def run(*args):
        return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                              timeout=300, cwd=ROOT)

    proc = run(tmp_path / "missing.tar.gz", tmp_path / "o")
    assert proc.returncode == 2 and "no such file" in proc.stderr
    (tmp_path / "junk.tar.gz").write_bytes(b"not a tar")
    proc = run(tmp_path / "junk.tar.gz", tmp_path / "o")
    assert proc.returncode == 2 and "not a readable .tar.gz" in proc.stderr
    few = _archive(tmp_path / "few.tar.gz", {"train/a/1.jpg": b"x"})
    proc = run(few, tmp_path / "o", "--per-class", "2")
    assert proc.returncode == 1 and "fewer than 2" in proc.stderr and "Traceback" not in proc.stderr
