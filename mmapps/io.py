"""Atomic file output: a failed run never leaves a half-written file or folder behind."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path


_LEGACY_STALE_SECONDS = 3600  # temp files from before the owner tag: removed once they are an hour old


def _owner_tag() -> str:
    """host-pid of this process, written into temp names so a later run can tell a dead writer's leftovers."""
    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the hidden temp files/folders that killed atomic writes of ``path`` left behind.

    A temp whose owner (host-pid in its name) is a dead process on this host is removed; temps of live
    processes and of other hosts (a shared file system) are left alone. Returns what was removed.
    """
    path = Path(path)
    removed = []
    host = socket.gethostname().replace(".", "_")
    try:
        candidates = list(path.parent.glob(f".{glob.escape(path.name)}.*"))
    except OSError:
        return removed
    for tmp in candidates:
        rest = tmp.name[len(path.name) + 2:]
        owner = rest.split(".", 1)[0]
        stale = False
        if ".tmp" not in rest and rest != "old":
            continue
        if owner.rsplit("-", 1)[0] == host and owner.rsplit("-", 1)[-1].isdigit():
            stale = not _pid_alive(int(owner.rsplit("-", 1)[-1]))
        elif "-" not in owner:  # legacy name without the owner tag
            try:
                stale = time.time() - tmp.lstat().st_mtime > _LEGACY_STALE_SECONDS
            except OSError:
                continue
        if stale:
            try:
                shutil.rmtree(tmp) if tmp.is_dir() and not tmp.is_symlink() else tmp.unlink()
                removed.append(tmp)
            except OSError:
                pass
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None):
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    Leftovers of earlier killed writes of the same path are removed first (see :func:`remove_stale_temps`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=suffix or f".tmp{path.suffix}",
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a temporary folder next to ``path``; it becomes ``path`` only if the block succeeds.

    An existing ``path`` is replaced as a whole (its old content is removed only after success).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
