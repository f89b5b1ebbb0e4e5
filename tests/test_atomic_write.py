"""One atomic write (issue 23): every file the framework writes is renamed into place by project.atomic.publish."""
import ast
from pathlib import Path

import pytest

from conftest import ROOT
from project import atomic


def test_os_replace_appears_in_one_function_of_the_package():
    sites = []
    for path in sorted((ROOT / "project").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                calls = [n for n in ast.walk(fn) if isinstance(n, ast.Attribute) and n.attr in ("replace", "rename")
                         and isinstance(n.value, ast.Name) and n.value.id == "os"]
                if calls:
                    sites.append(f"{path.relative_to(ROOT)}:{fn.name}")
    assert sites == ["project/atomic.py:publish"], sites


def test_a_write_leaves_the_old_file_or_the_new_one_and_no_temp_file(tmp_path):
    target = tmp_path / "a.json"
    atomic.write_atomic(target, "old")
    with pytest.raises(RuntimeError), atomic.replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed half-way")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]
    atomic.write_atomic(target, b"new", fsync=True)
    assert target.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_folder_is_published_whole(tmp_path):
    target = tmp_path / "masks"
    with atomic.replacing(target) as tmp:
        tmp.mkdir()
        (tmp / "1.png").write_bytes(b"png")
    assert [p.name for p in Path(target).iterdir()] == ["1.png"] and sorted(tmp_path.iterdir()) == [target]


def test_a_stale_temp_link_is_never_written_through(tmp_path):
    """A temp name left by a failed write may be a hard link to a published file (checkpoints share one file)."""
    published = tmp_path / "best.pth"
    published.write_bytes(b"best")
    atomic.temp_beside(tmp_path / "last.pth").hardlink_to(published)
    atomic.write_atomic(tmp_path / "last.pth", b"last")
    assert published.read_bytes() == b"best" and (tmp_path / "last.pth").read_bytes() == b"last"
