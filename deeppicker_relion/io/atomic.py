"""Atomic file writes: write to a temporary file in the same folder, then rename over the target.

Temporary files are hidden and named ``.<name>.<host>-<pid>.<random>.tmp<suffix>``. A process
killed hard (SIGKILL, power loss) cannot remove its temporary file; :func:`remove_stale_temporaries`
removes those of dead processes of this host when a job is run again. Readers never see a
half-written file under the target's name.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
from pathlib import Path
from typing import Iterator

_TEMP = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[^.]*\.tmp(\.[^.]+)?$")


def _host() -> str:
    """This host's short name, reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname().split(".")[0]) or "host"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, else delete it.

    Readers never see a half-written file: either the old file, or the complete new one.
    The temporary name keeps the suffix of ``path`` so that libraries choosing a format by
    extension (starfile, mrcfile, numpy) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{_host()}-{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete temporary files of :func:`atomic_path` below ``folder`` (recursively) whose writer
    process, on this host, is gone; returns the paths removed. Files of live processes (another
    shard writing into the same folder) and of other hosts are left alone."""
    folder = Path(folder)
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    host = _host()
    for path in folder.rglob(".*.tmp*"):
        match = _TEMP.match(path.name)
        if not match or match.group("host") != host or _alive(int(match.group("pid"))):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed
