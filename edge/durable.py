"""Durable small files for the flight side (standard library only): the state that must survive a
power cut (frame ids, packet counters, the uplink's anti-replay counter) is written so that a cut
at any moment leaves either the old content or the new one, never a mix."""
from __future__ import annotations

import os


def fsync_dir(path) -> None:
    """fsync a directory: makes a rename or a new file in it durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data) -> int:
    """os.write until everything is out (pipes and ttys may take part of a buffer)."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        done += os.write(fd, view[done:])
    return done


def atomic_write(path, data: bytes) -> None:
    """Replace `path` with `data`: a temp file in the same directory (same file system, so the
    rename is atomic), fsynced, renamed over `path`, then the directory fsynced so the rename itself
    survives a power cut. The temp file is removed when anything fails."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


__all__ = ["atomic_write", "fsync_dir", "write_all"]
