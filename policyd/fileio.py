"""Replacing a file so that a reader sees the old bytes or the new ones, never a part.

Used for private keys (policyd/certs.py) and the daemon's saved state
(policyd/server/state.py): the temporary file is born 0600 with O_EXCL next to
the target, fsync'ed, then put in place and the directory fsync'ed.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path


class TempFileError(OSError):
    """The temporary file could not be created (`filename` names it)."""


class NotRegularFileError(OSError):
    """The target exists and is not a regular file (a device, a directory, a FIFO...):
    renaming over it would replace it, e.g. /dev/null with a regular file."""


def _refuse_non_regular(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise NotRegularFileError(errno.EEXIST, f"{kind}: refusing to replace it", str(path))


def write_atomically(path: Path, data: bytes, *, mode: int = 0o600, overwrite: bool = True,
                     before_write: Callable[[int], None] | None = None) -> None:
    """Write `data` to `path` with exactly `mode`.

    `before_write(fd)` runs on the open temporary file (e.g. fchown); whatever it
    raises propagates. With `overwrite=False` the file is linked into place, which
    fails with FileExistsError if `path` appeared meanwhile. Raises OSError
    (TempFileError for the temporary file, NotRegularFileError when `path` is there and is
    neither a regular file nor a symlink); the temporary file never stays behind.
    """
    path = Path(path)
    _refuse_non_regular(path)
    directory = path.parent
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0)
    while True:
        tmp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, flags, 0o600)
            break
        except FileExistsError:
            continue
        except OSError as exc:
            raise TempFileError(exc.errno, exc.strerror, str(tmp)) from exc
    placed = False
    try:
        try:
            if before_write is not None:
                before_write(fd)
            os.fchmod(fd, mode)  # exact mode, independent of the umask
            view = memoryview(data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            _refuse_non_regular(path)  # again: it may have appeared while we wrote
            os.replace(tmp, path)
            placed = True
        else:
            try:
                os.link(tmp, path)
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                # Filesystem without hard links: best-effort no-clobber rename.
                if os.path.lexists(path):
                    raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path)) from None
                os.rename(tmp, path)
                placed = True
    finally:
        if not placed:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
    fsync_dir(directory)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (best effort: some file systems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
