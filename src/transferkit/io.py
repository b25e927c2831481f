"""Atomic file and directory writes: nothing is ever half-written."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike[str], *, overwrite: bool = True,
                      owned_files: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a temporary sibling directory that replaces ``out`` only when the block succeeds.

    On any exception the temporary directory is removed and ``out`` is left as it was (absent, or the
    previous complete result).

    Args:
        out: Final directory path.
        overwrite: Replace an existing ``out``; when False an existing ``out`` raises ``FileExistsError``.
        owned_files: Files a previous output of the same step always holds. When given, an existing non-empty
            ``out`` holding none of them is someone else's directory and is never replaced.

    Yields:
        The temporary directory to write into.

    Raises:
        ConfigError: ``out`` holds files this step did not write (``owned_files`` given).

    """
    final = Path(out).absolute()
    if final.exists() and not overwrite:
        raise FileExistsError(f"{final}: output directory exists")
    check_replaceable(final, owned_files)
    created = [d for d in (final.parent, *final.parent.parents) if not d.exists()]
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    # mkdtemp creates 0700; artifacts are read by other users and pods, so use the umask-default mode.
    tmp.chmod(0o777 & ~_umask())
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for directory in created:  # innermost first: parents this call made, if still empty
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    replace_dir(tmp, final)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_staging(out: str | os.PathLike[str]) -> list[Path]:
    """Remove the incomplete siblings of ``out`` that a killed run left behind, logging each.

    Those are staging directories (``.NAME.tmp-PID-*``) whose process is gone and rename-aside directories
    (``.NAME.old-*``); a re-run removes them so a ``kill -9`` leaves nothing behind for long.

    Returns:
        The directories removed.
    """
    final = Path(out).absolute()
    removed = []
    if not final.parent.is_dir():
        return removed
    for candidate in sorted(final.parent.glob(f".{final.name}.tmp-*")) + sorted(final.parent.glob(
            f".{final.name}.old-*")):
        owner = candidate.name.rsplit(".tmp-", 1)[-1].split("-", 1)[0] if ".tmp-" in candidate.name else ""
        if owner.isdigit() and _pid_alive(int(owner)):
            continue  # a concurrent run still writing
        shutil.rmtree(candidate, ignore_errors=True)
        if not candidate.exists():
            removed.append(candidate)
            logger.warning("removed %s: incomplete output of an interrupted run", candidate)
    return removed


def check_creatable(out: str | os.PathLike[str], field_name: str = "out") -> None:
    """Refuse an output directory that cannot be created, before any work (not after the work is done).

    Raises:
        ConfigError: ``out`` is a file, or its nearest existing ancestor is a file or not writable.
    """
    from transferkit.errors import ConfigError

    final = Path(out).absolute()
    if final.exists():
        if not final.is_dir():
            raise ConfigError(f"{field_name}: {out} exists and is not a directory")
        return
    ancestor = next(d for d in final.parents if d.exists())
    if not ancestor.is_dir():
        raise ConfigError(f"{field_name}: {out} cannot be created: {ancestor} is a file, not a directory")
    try:  # os.access says yes to root on read-only file systems: try it (an empty directory, removed at once)
        Path(tempfile.mkdtemp(prefix=".transferkit-write-test-", dir=ancestor)).rmdir()
    except OSError as exc:
        raise ConfigError(f"{field_name}: {out} cannot be created: {ancestor} is not writable "
                          f"({exc.strerror or type(exc).__name__})") from None


def check_replaceable(out: str | os.PathLike[str], owned_files: tuple[str, ...]) -> None:
    """Refuse to replace ``out`` when it is a non-empty directory holding none of ``owned_files``.

    A step replaces its previous output on a re-run; a directory without any file that output always has
    is someone else's (the user's own files), and replacing it would delete them without a word.

    Raises:
        ConfigError: Names the directory and some of the files in it.
    """
    final = Path(out)
    if not owned_files or not final.is_dir() or any((final / name).exists() for name in owned_files):
        return
    foreign = sorted(p.name for p in final.iterdir())
    if foreign:
        from transferkit.errors import ConfigError

        raise ConfigError(f"out: {final} already holds files this command did not write ({', '.join(foreign[:3])}"
                          f"{', ...' if len(foreign) > 3 else ''}); choose an empty or new directory")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` to ``dst``, replacing any existing ``dst`` with a rename-aside."""
    if dst.exists():
        aside = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        aside.rmdir()
        os.replace(dst, aside)
        os.replace(src, dst)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(src, dst)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return target


def write_json(path: str | os.PathLike[str], payload: Any) -> Path:
    """Write ``payload`` as indented, key-sorted JSON atomically."""
    return write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)
