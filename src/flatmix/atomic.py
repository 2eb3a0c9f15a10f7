"""Atomic outputs: write under a temporary name beside the target, then rename over it.

A killed or failed command therefore never leaves a half-written file under its final name. Temporary
names carry the writer's host and pid (`.NAME.HOST.PID.RANDOM.partial`), so that the next write of the
same file removes the partials that killed processes of this host left behind, and never those of a
live writer (another torchrun rank). Files get the permissions the user's umask gives new files.
"""

from contextlib import contextmanager
import errno
import json
import math
import os
from pathlib import Path
import shutil
import socket
import tempfile

PARTIAL_SUFFIX = ".partial"


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path):
    """Remove the partials of `path` left by dead processes of this host."""
    path = Path(path)
    prefix = f".{path.name}.{socket.gethostname()}."
    for partial in path.parent.glob(f".{path.name}.*{PARTIAL_SUFFIX}"):
        if not partial.name.startswith(prefix):
            continue
        pid = partial.name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            partial.unlink(missing_ok=True)


@contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path`; on success it is renamed to `path`, on failure removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{socket.gethostname()}.{os.getpid()}.",
                                   suffix=PARTIAL_SUFFIX, dir=path.parent)
    except OSError as e:  # name the file the user asked for, not the temporary one
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 whatever the umask
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename == tmp:
            raise OSError(e.errno, e.strerror, str(path)) from None
        raise


def write_text(path, text):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _finite(obj):
    """JSON has no NaN or Infinity: a non-finite float is written as null."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path, obj):
    write_text(path, json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False) + "\n")


def write_torch(path, obj):
    """torch.save, atomically. torch reports a failed write as a RuntimeError: made an OSError naming the
    file (No space left on device when the disk is full), for the CLI's one-line message."""
    import torch  # only the commands that save tensors pay for the import

    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:
            full = shutil.disk_usage(Path(path).parent).free < (1 << 20)
            raise OSError(errno.ENOSPC if full else errno.EIO, os.strerror(errno.ENOSPC) if full
                          else f"write failed ({str(e).splitlines()[0]})", str(path)) from None
