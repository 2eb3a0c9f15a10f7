"""Progress a person can follow: plain lines off a terminal, the data-wait share, contrastive top-1."""

import re
import time

import torch

from conftest import run_flatmix
from flatmix.pretrain import contrastive_top1
from flatmix.progress import Progress, Window

PLAIN_END = re.compile(r" [\d,.]+ \w+/s data-wait \d+% eta \d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(\d+:\d\d(:\d\d)? left\)$")


def plain_lines(stderr, desc):
    """The progress lines of `desc` in a command's stderr (not the kNN monitor's lines of their own),
    checked to be plain (no bar's carriage returns) and to end with the rate, the data-wait share and the
    ETA."""
    assert "\r" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith(f"{desc} ") and " knn top1 " not in line]
    for line in lines:
        assert PLAIN_END.search(line), line
    return lines


def test_top1_is_the_share_of_rows_whose_positive_ranks_first():
    logits = torch.tensor([[3.0, 1.0, 2.0],    # positive first
                           [0.0, 5.0, 1.0],    # a negative first
                           [2.0, -1.0, 1.9],   # positive first
                           [1.0, 1.5, 0.0]])   # a negative first
    assert contrastive_top1(logits).item() == 50.0
    # CMC: both directions' rows together (its first direction alone would be 100, its second 0)
    assert contrastive_top1(logits[[0, 2]], logits[[1, 3]]).item() == 50.0
    assert contrastive_top1(torch.zeros(2, 3).index_fill_(1, torch.tensor([0]), 1.0)).item() == 100.0


def test_plain_lines_come_at_most_every_interval_or_when_forced(capsys):
    progress = Progress("job", total=10, unit="img", per_step=4, every_s=3600)
    for i, _ in enumerate(progress.batches(range(3))):
        progress.show(f"step {i + 1}/10")
    progress.show("step 3/10 again", force=True)
    progress.close()
    err = capsys.readouterr().err
    assert err.endswith("\n")
    lines = plain_lines(err, "job")
    assert [line.split(" img/s")[0].rsplit(" ", 1)[0] for line in lines] == ["job step 1/10", "job step 3/10 again"]
    assert len(err.splitlines()) == 2


def test_data_wait_is_the_share_of_time_spent_waiting_for_batches():
    def slow_loader():
        for i in range(3):
            time.sleep(0.05)
            yield i

    waiting = Window()
    for _ in waiting.batches(slow_loader()):
        pass
    steps_per_s, share = waiting.read()
    assert share > 0.8 and 0 < steps_per_s < 1 / 0.05

    computing = Window()
    for _ in computing.batches(range(3)):
        time.sleep(0.05)
    assert computing.read()[1] < 0.2


def test_synth_logs_plain_counted_lines_off_a_terminal(tmp_path):
    """`flatmix synth` in a rule's log: one plain line per data set at its end (no bar's carriage returns)."""
    result = run_flatmix("synth", "--out", tmp_path / "synth", "--size", "16", "--train-per-class", "1",
                         "--val-per-class", "1", "--voc-images", "2", "--coco-images", "2")
    assert result.returncode == 0, result.stderr
    for desc, total in (("synth imagenet", 2 * 106), ("synth voc", 6), ("synth coco", 4)):
        assert plain_lines(result.stderr, desc)[-1].startswith(f"{desc} image {total}/{total} ")
