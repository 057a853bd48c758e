"""Writing files so that nothing is lost: a crash leaves either the old file or the new one."""

from __future__ import annotations

import fcntl
import glob
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def default_file_mode() -> int:
    """The mode a plain ``open()`` would give a new file: 0o666 less the process umask."""
    current = os.umask(0)
    os.umask(current)
    return 0o666 & ~current


#: the file :func:`lock_folder` holds: vitkit's own in any folder
LOCK_FILE = ".lock"


def lock_folder(folder: Path) -> IO[str]:
    """Hold an exclusive lock on ``folder`` for as long as the returned file stays open (the
    process ending releases it too); a second holder is refused with an error naming the first."""
    handle = open(folder / LOCK_FILE, "a+")  # noqa: SIM115 — the open file is the lock
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read().strip() or "another process"
        handle.close()
        raise ValueError(f"{folder} is in use by {owner}; wait for it to finish (or stop it) first") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"vitkit process {os.getpid()}")
    handle.flush()
    return handle


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (anyone's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporary files that writers of ``path`` killed mid-write left (their process is
    gone): a model or checkpoint each, which nothing else would ever remove."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        pid = stale.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            stale.unlink(missing_ok=True)


def check_out_folder(folder: Path, *, own: str | None, force: bool = False) -> None:
    """Refuse to write into ``folder`` when it holds files vitkit did not write (a user's
    ``config.json`` would be replaced): it must be new, empty, or hold ``own`` (the file by which
    vitkit recognises a folder it wrote, e.g. a run's ``train_config.json``), unless ``force``."""
    if force or not folder.exists():
        return
    if not folder.is_dir():
        raise FileExistsError(f"{folder} is a file, not a folder; choose a folder to write into")
    if own is not None and (folder / own).is_file():
        return
    found = sorted(entry.name for entry in folder.iterdir() if entry.name != LOCK_FILE)
    if found:
        shown = ", ".join(found[:3]) + (f" and {len(found) - 3} more" if len(found) > 3 else "")
        raise FileExistsError(
            f"{folder} holds files vitkit did not write ({shown}); choose a new or empty folder, or pass --force "
            "to write into it anyway (files of the same names are replaced)"
        )


def cache_dir() -> Path:
    """vitkit's own cache (downloads, decoded datasets): ``$VITKIT_HOME`` if set, else
    ``$XDG_CACHE_HOME/vitkit`` (``~/.cache/vitkit``). Hugging Face files live in huggingface_hub's."""
    if os.environ.get("VITKIT_HOME"):
        return Path(os.environ["VITKIT_HOME"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "vitkit"


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, flush it to disk, then rename it
    over ``path`` (an atomic replace on POSIX and Windows). The temporary file's name carries the
    writer's process id, so that those left by killed writers are cleaned up by the next one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp makes the file private, and some writers (safetensors) replace it with their own
        # private file: give the result the usual permissions, so other users can read models.
        tmp.chmod(default_file_mode())
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
