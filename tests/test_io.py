"""absvit.io.atomic_dir: a folder appears whole or not at all."""
import os
import stat

import pytest

from absvit.io import atomic_dir


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o002, 0o775), (0o077, 0o700)])
def test_a_new_folder_appears_when_the_block_succeeds(tmp_path, umask, mode):
    out = tmp_path / "parent" / "shard"
    old = os.umask(umask)
    try:
        with atomic_dir(out) as tmp:
            assert tmp.parent == out.parent and tmp.is_dir() and not out.exists()
            (tmp / "a").mkdir()
            (tmp / "a" / "x.txt").write_text("x")
    finally:
        os.umask(old)
    assert _tree(out) == {"a/x.txt": "x"}
    assert stat.S_IMODE(out.stat().st_mode) == mode  # as mkdir gives it, not mkdtemp's 0700
    assert os.listdir(out.parent) == ["shard"]


def test_a_folder_already_there_is_replaced(tmp_path):
    out = tmp_path / "shard"
    (out / "stale").mkdir(parents=True)
    (out / "stale" / "old.txt").write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert _tree(out) == {"new.txt": "new"}
    assert os.listdir(tmp_path) == ["shard"]


def test_a_failing_block_keeps_the_old_folder_and_leaves_no_temp(tmp_path):
    out = tmp_path / "shard"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert _tree(out) == {"old.txt": "old"}
    assert os.listdir(tmp_path) == ["shard"]


def test_a_failing_block_writes_nothing_where_there_was_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "shard") as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []


def test_a_file_in_the_way_is_named(tmp_path):
    (tmp_path / "shard").write_text("a file")
    with pytest.raises(NotADirectoryError, match=f"{tmp_path / 'shard'}: not a folder"):
        with atomic_dir(tmp_path / "shard"):
            pass
    assert (tmp_path / "shard").read_text() == "a file" and os.listdir(tmp_path) == ["shard"]
