"""A run's metrics twice from the same records: JSON lines (metrics.jsonl, what flatmix itself reads) and
TensorBoard event files in a `tensorboard/` folder beside them (what people open: `tensorboard --logdir
results/`). A continued run purges the events after its resume point, as it trims metrics.jsonl, so each
step is shown once.
"""

import json
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter

TENSORBOARD = "tensorboard"  # the event files' folder inside a run's folder
COUNTERS = ("epoch", "step", "time")  # a record's position and time, not scalars of their own


class MetricsLog:
    """Records into FOLDER/JSONL (None: TensorBoard only) and FOLDER/tensorboard/, each number of a record
    a scalar `TAG/key` at its global step."""

    def __init__(self, folder, tag, jsonl="metrics.jsonl", resume_step=None):
        folder = Path(folder)
        self.tag = tag
        self.lines = open(folder / jsonl, "a") if jsonl else None
        # purge_step: TensorBoard drops the earlier events from this step on (logged before a kill, then redone)
        purge = None if resume_step is None else resume_step + 1
        self.board = SummaryWriter(str(folder / TENSORBOARD), purge_step=purge)

    def write(self, record, global_step):
        if self.lines:
            self.lines.write(json.dumps(record) + "\n")
            self.lines.flush()
        for key, value in record.items():
            if key not in COUNTERS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.board.add_scalar(f"{self.tag}/{key}", value, global_step, walltime=record.get("time"))
        self.board.flush()  # as metrics.jsonl: a stopped or killed run keeps every record it logged

    def close(self):
        if self.lines:
            self.lines.close()
        self.board.close()
