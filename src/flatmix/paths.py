"""Where a command may write, and what it may remove.

- An output never lands on an input: an output may not be, hold, or lie inside any input (symlinks
  resolved), so `convert X --out X` or a run folder inside the data set is refused before any work.
- A command removes only what it made: a folder it fills and later clears (prepare's symlink tree,
  synth's data set) carries an ownership marker naming the command, and a folder that holds anything
  else is refused rather than cleared.
"""

import json
from pathlib import Path
import shutil

from flatmix import atomic
from flatmix.errors import FlatmixError

OWNER_MARKER = ".flatmix-owner.json"


def _related(a, b):
    return a == b or a in b.parents or b in a.parents


def refuse_overlap(outputs, inputs):
    """Refuse when any output (label -> path) is, holds or lies inside any input (label -> path)."""
    for out_label, out in outputs.items():
        o = Path(out).resolve()
        for in_label, source in inputs.items():
            if source is not None and _related(o, Path(source).resolve()):
                raise FlatmixError(f"{out_label} {out} overlaps {in_label} {source}: "
                                   "an output may not be, hold or lie inside an input")


def output_file(label, path):
    """Refuse a file output that names an existing folder."""
    if Path(path).is_dir():
        raise FlatmixError(f"{label} {path} is a folder; give a file name")


def output_folder(label, path):
    """Refuse a folder output that names an existing file (or a symlink to one)."""
    if Path(path).exists() and not Path(path).is_dir():
        raise FlatmixError(f"{label} {path} is a file; give a folder")


def _is_own_partial(name, entries):
    """An interrupted atomic write of one of the command's own files (`.NAME.*.partial`)."""
    return name.endswith(atomic.PARTIAL_SUFFIX) and any(name.startswith(f".{e}.") for e in entries)


def claim_folder(out, command, entries):
    """Make `out` the folder of `command`, or refuse: it must be new, empty, or already marked as made by
    `command` and hold nothing but `entries` (and interrupted writes of them)."""
    out = Path(out)
    output_folder("--out", out)
    present = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if present:
        marker = out / OWNER_MARKER
        if not marker.is_file():
            raise FlatmixError(f"--out {out} already holds files that flatmix did not write ({present[0]}, ...); "
                               "choose a new or empty folder")
        try:
            owner = json.loads(marker.read_text()).get("command")
        except (ValueError, UnicodeDecodeError, AttributeError):
            owner = None
        if owner != command:
            raise FlatmixError(f"--out {out} was made by {owner or 'something else'}, not {command}; "
                               "choose a new or empty folder")
        foreign = [n for n in present if n != OWNER_MARKER and n not in entries and not _is_own_partial(n, entries)]
        if foreign:
            raise FlatmixError(f"--out {out} holds {foreign[0]}, which {command} did not write; "
                               "move it away or choose another folder")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic.write_json(out / OWNER_MARKER, {"command": command})
    return out


def check_links_tree(path):
    """Refuse unless `path` is absent or a folder of folders and symlinks only (what prepare makes)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or not path.is_dir():
        raise FlatmixError(f"{path} is not a folder of links made by flatmix; move it away")
    for p in path.rglob("*"):
        if not p.is_symlink() and not p.is_dir():
            raise FlatmixError(f"{p} is not a link made by flatmix; refusing to remove {path}")


def remove_links_tree(path):
    """Remove a tree this command made of folders and symlinks only; anything else in it is refused."""
    check_links_tree(path)
    if Path(path).exists():
        shutil.rmtree(path)


def remove_owned_tree(out, name):
    """Remove `out/name`, a part of a folder that claim_folder has marked as this command's."""
    target = Path(out) / name
    if target.is_symlink():
        raise FlatmixError(f"{target} is a symlink, not a folder flatmix made; move it away")
    if target.exists():
        shutil.rmtree(target)
