"""Reading checkpoint files safely. Checkpoints are pickles, and unpickling runs code, so every file is
read with torch's weights_only unpickler, which builds tensors and plain containers only, plus the
types a caller allowlists. Whatever the bytes (missing, a directory, empty, truncated, corrupt, a
forbidden global), the caller gets the checkpoint or one FlatmixError line naming the file and why;
torch's readers raise many exception types on corrupt input and warn on some, so both are caught.
"""

import argparse
import pickle
import re
import warnings
from pathlib import Path

import torch

from flatmix.errors import FlatmixError

PLAIN = (argparse.Namespace,)  # the CMC code base saves its options as one


def _reason(e):
    """What went wrong, on one line: torch wraps the weights_only unpickler's reason in lines of advice."""
    lines = [line.split("WeightsUnpickler error:")[-1].strip() for line in str(e).splitlines()]
    lines = [line for line in lines if line and not line.startswith(
        ("Weights only load failed", "(1)", "(2)", "Check the documentation"))]
    text = " ".join((lines[0] if lines else "").split())  # also \x1c, \u2028, ...: str.splitlines breaks there
    text = text.split(". ")[0][:200]  # the first sentence: the rest is advice
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def load_checkpoint(path, safe_globals=PLAIN):
    """The unpickled checkpoint at `path` (on the CPU), refusing any object that is not a tensor, a plain
    container or one of `safe_globals`; every failure is a one-line FlatmixError naming the file."""
    if not Path(path).exists():
        raise FlatmixError(f"{path}: no such checkpoint file")
    if not Path(path).is_file():
        raise FlatmixError(f"{path}: not a checkpoint file")
    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals(list(safe_globals)):
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any bytes at all must end in one line, not a traceback
        unsafe = re.search(r"GLOBAL (\S+)", str(e)) if isinstance(e, pickle.UnpicklingError) else None
        if unsafe:
            raise FlatmixError(f"{path}: refused to unpickle {unsafe.group(1)} (not a tensor or plain data)") from None
        raise FlatmixError(f"{path}: not a readable checkpoint ({_reason(e)})") from None


def load_own_state(path, keys, what):
    """A training state this project wrote (a last.pth): a dict with `keys`, its "config" a dict; anything
    else at that name is refused with one line naming `what` it should have been."""
    state = load_checkpoint(path, safe_globals=())
    if not isinstance(state, dict) or not {"config", *keys} <= set(state) or not isinstance(state["config"], dict):
        raise FlatmixError(f"{path} is not a flatmix {what}; move it away or use another --out")
    return state
