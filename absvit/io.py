"""Atomic file and folder writes: a reader (or Snakemake) never sees a half-written output."""
from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from absvit.errors import DiskFull


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def free_bytes(folder) -> int:
    """The bytes a new file in ``folder`` may still take (root may also take the blocks reserved for root)."""
    st = os.statvfs(folder)
    return (st.f_bfree if os.geteuid() == 0 else st.f_bavail) * st.f_frsize


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path):
        path = path.parent
    return path


def _bytes(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.1f} MiB)"


def disk_full(path, needed: int, free: int, *, exact: bool = True) -> DiskFull:
    """The one-line error for a write of ``path`` that the file system has no room for."""
    path = Path(path)
    need = _bytes(needed) if exact else f"more than {_bytes(needed)}"
    return DiskFull(f"no space left on the device of {path} (file system mounted at {_mount_point(path.parent)}): "
                    f"writing it needs {need}, {_bytes(free)} free", path=path, needed=needed, free=free,
                    kept="nothing was written: the file already there, if any, is unchanged")


def _out_of_space(exc: BaseException, folder: Path, missing: int) -> bool:
    """``exc`` (or an exception it chains to) is ENOSPC, or it is the RuntimeError that ``torch.save``
    straight into a file turns a short write into ("unexpected pos ...") and ``folder`` lacks ``missing`` bytes."""
    seen, e = set(), exc
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return isinstance(exc, RuntimeError) and free_bytes(folder) < max(missing, os.statvfs(folder).f_frsize)


@contextmanager
def atomic_path(path, size: int | None = None):
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The file gets the permissions a plain ``open`` would give it (0666 less the umask), not
    ``mkstemp``'s owner-only 0600: collaborators on a shared cluster must be able to read results.
    A full file system raises ``DiskFull`` (the path, the bytes needed and free) with the temp file removed
    and ``path`` untouched; with ``size`` (the bytes to be written) that is checked before anything is written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if size is not None and free_bytes(path.parent) < size:
        raise disk_full(path, size, free_bytes(path.parent))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield Path(tmp)
        os.replace(tmp, path)
    except Exception as e:
        written = os.path.getsize(tmp) if tmp is not None and os.path.exists(tmp) else 0
        full = _out_of_space(e, path.parent, (size or 0) - written)  # while the temp file still takes its space
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if not full:
            raise
        raise disk_full(path, written if size is None else size, free_bytes(path.parent), exact=size is not None) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def atomic_dir(path):
    """Yield a new temporary folder beside ``path``; rename it onto ``path`` only if the block succeeds.

    A folder already at ``path`` is replaced. The new folder gets the permissions a plain ``mkdir`` would give
    it (0777 less the umask), not ``mkdtemp``'s owner-only 0700. If the block raises, the temporary folder is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path}: not a folder (expected a folder to replace, or nothing there)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        tmp.chmod(0o777 & ~_umask())
        yield tmp
        _replace_dir(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_dir(new: Path, path: Path) -> None:
    """Rename folder ``new`` onto ``path``. A folder already there is moved aside first and deleted only once
    ``new`` is in place (a folder cannot be renamed onto a non-empty one), so ``path`` is missing only between
    two renames, and is put back if the second fails."""
    if not path.exists():
        new.rename(path)
        return
    aside = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
    try:
        path.rename(aside / path.name)
        try:
            new.rename(path)
        except BaseException:
            (aside / path.name).rename(path)
            raise
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def write_bytes(path, data) -> None:
    """Write ``data`` (bytes or a buffer) atomically, after checking the file system has room for it."""
    data = memoryview(data)
    with atomic_path(path, size=data.nbytes) as tmp:
        tmp.write_bytes(data)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode())


def write_json(path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_torch(path, obj) -> None:
    """``torch.save`` atomically, serialised in memory first: its size is known (and checked against the free
    space) before anything touches the disk."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getbuffer())


def append_jsonl(path, row: dict) -> None:
    """One JSON line appended to a log such as metrics.jsonl (a resumed run first drops the rows past its
    checkpoint: ``checkpoint.truncate_log``)."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
