import os
import stat
from pathlib import Path

import pytest

from pretrain.ground.atomic import write_text, write_with


@pytest.mark.parametrize("write", [write_text, lambda path, text: write_with(path, lambda tmp: tmp.write_text(text))])
def test_atomic_write_gives_the_usual_file_mode(write, tmp_path: Path) -> None:
    mask = os.umask(0o022)
    try:
        write(tmp_path / "a.txt", "x")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    write_text(tmp_path / "a.txt", "old")

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        write_with(tmp_path / "a.txt", broken)
    assert (tmp_path / "a.txt").read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.txt"]
