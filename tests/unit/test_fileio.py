"""The one atomic writer (policyd/fileio.py) refuses to replace what is not a regular file."""

import os
import stat

import pytest

from policyd.fileio import NotRegularFileError, TempFileError, write_atomically


def leftovers(directory):
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_a_directory_target_is_refused_and_nothing_stays_behind(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    with pytest.raises(NotRegularFileError, match="a directory: refusing to replace it") as exc:
        write_atomically(target, b"x")
    assert exc.value.filename == str(target)
    assert target.is_dir() and leftovers(tmp_path) == []


def test_a_fifo_target_is_refused(tmp_path):
    target = tmp_path / "fifo"
    os.mkfifo(target)
    with pytest.raises(NotRegularFileError, match="not a regular file"):
        write_atomically(target, b"x")
    assert stat.S_ISFIFO(os.lstat(target).st_mode) and leftovers(tmp_path) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="creating a device node needs root")
def test_a_device_node_is_never_replaced(tmp_path):
    target = tmp_path / "null"
    os.mknod(target, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a /dev/null of our own
    with pytest.raises(NotRegularFileError):
        write_atomically(target, b"x")
    assert stat.S_ISCHR(os.lstat(target).st_mode) and leftovers(tmp_path) == []


def test_a_missing_directory_names_the_temporary_file(tmp_path):
    with pytest.raises(TempFileError) as exc:
        write_atomically(tmp_path / "nope" / "out", b"x")
    assert "nope" in exc.value.filename


def test_regular_files_and_symlinks_are_replaced(tmp_path):
    target = tmp_path / "out"
    target.write_bytes(b"old")
    write_atomically(target, b"new", mode=0o640)
    assert target.read_bytes() == b"new" and stat.S_IMODE(target.stat().st_mode) == 0o640
    link = tmp_path / "link"
    link.symlink_to(target)
    write_atomically(link, b"via link")
    assert link.read_bytes() == b"via link" and not link.is_symlink() and target.read_bytes() == b"new"
    assert leftovers(tmp_path) == []
