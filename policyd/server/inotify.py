"""Linux inotify through ctypes: which files of a directory a writer has finished.

Only the few calls the rules-file watcher needs (inotify_init1, inotify_add_watch,
read): no dependency to install, and None where the kernel or libc lacks them,
in which case the watcher falls back to stat polling alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import struct
from typing import Iterator, Optional

log = logging.getLogger("policyd.inotify")

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name

WATCHED = IN_MODIFY | IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_CREATE | IN_DELETE | IN_ATTRIB


class DirectoryEvents:
    """Events for the files of some directories, read without blocking."""

    def __init__(self, fd: int, libc) -> None:
        self._fd = fd
        self._libc = libc
        self._dirs: dict[int, str] = {}

    @classmethod
    def open(cls) -> Optional["DirectoryEvents"]:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError) as exc:
            log.info("inotify unavailable (%s): polling only", exc)
            return None
        if fd < 0:
            log.info("inotify unavailable (%s): polling only", os.strerror(ctypes.get_errno()))
            return None
        return cls(fd, libc)

    def watch(self, directory: str) -> bool:
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(directory), WATCHED)
        if wd < 0:
            log.info("cannot watch %s with inotify (%s): polling only", directory,
                     os.strerror(ctypes.get_errno()))
            return False
        self._dirs[wd] = directory
        return True

    def read(self) -> Iterator[tuple[str, int]]:
        """(path, mask) of every event queued; ("", IN_Q_OVERFLOW) when some were lost."""
        while True:
            try:
                data = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
                name = data[offset + _EVENT.size:offset + _EVENT.size + length].rstrip(b"\0")
                offset += _EVENT.size + length
                if mask & IN_Q_OVERFLOW:
                    yield "", IN_Q_OVERFLOW
                elif wd in self._dirs:
                    yield os.path.join(self._dirs[wd], os.fsdecode(name)), mask

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
