"""kNN classification (flatmix.knn): the weighted vote against a by-hand one, the monitor during pretraining
(it changes nothing the run computes, logs knn_top1, and survives a stop signal in the middle of it), and
`flatmix knn` on one process and two, agreeing with the monitor's last check."""

import json
import signal

import pytest
import torch
import torch.nn.functional as F

from flatmix import knn, pretrain
from flatmix.presets import DEFAULTS, PRESETS
from flatmix.runconfig import resolve
from conftest import assert_one_line_error, run_flatmix, tensorboard_scalars
from test_pretrain import BIN, _assert_same_weights, _pretrain_args


def _by_hand(queries, query_labels, bank, bank_labels, classes, k, t):
    """InstDisc's vote, one query at a time: the k most similar bank entries, each adding exp(cos / t)."""
    top1 = top5 = 0
    for q, y in zip(queries, query_labels, strict=False):
        similarity = [(float(q @ b), int(label)) for b, label in zip(bank, bank_labels, strict=False)]
        votes = [0.0] * classes
        for s, label in sorted(similarity, reverse=True)[:k]:
            votes[label] += torch.tensor(s / t).exp().item()
        ranked = sorted(range(classes), key=lambda c: -votes[c])
        top1 += ranked[0] == y
        top5 += y in ranked[:5]
    return top1, top5


@pytest.mark.parametrize("k", [1, 7, 500])  # 500: more than the bank, which then votes whole
def test_the_vote_is_instdiscs(k):
    torch.manual_seed(0)
    bank, queries = F.normalize(torch.randn(300, 16), dim=1), F.normalize(torch.randn(130, 16), dim=1)
    bank_labels, query_labels = torch.randint(0, 9, (300,)), torch.randint(0, 9, (130,))
    counts = knn.hits(queries, query_labels, bank, bank_labels, classes=9, k=k, t=0.1)
    assert counts.tolist() == [*_by_hand(queries, query_labels, bank, bank_labels, 9, k, 0.1), 130]


def _spec(data, *sets):
    return resolve(DEFAULTS, PRESETS, "smoke-moco-mix", None,
                   [f"data.root={data}", "model.arch=resnet_tiny", "train.epochs=2", *sets])


@pytest.fixture(scope="module")
def runs(synth_root, tmp_path_factory):
    """Two runs of one spec, the monitor off and on (pil loader with 2 workers, so that its own loader has
    workers too): {"off": folder, "on": folder}."""
    made = {}
    for name, every in (("off", 0), ("on", 1)):
        out = tmp_path_factory.mktemp(name)
        result = run_flatmix(*_pretrain_args(synth_root / "imagenet", out, "model.arch=resnet_tiny", "train.epochs=2",
                                             "data.workers=2", f"train.knn_every={every}"))
        assert result.returncode == 0, result.stderr[-3000:]
        made[name] = out
    return made


def _lines(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_the_monitor_changes_nothing_the_run_computes_and_logs_knn_top1(runs):
    _assert_same_weights(runs["off"] / "checkpoint.pth", runs["on"] / "checkpoint.pth")
    steps = [line for line in _lines(runs["on"]) if "loss" in line]
    assert [(s["epoch"], s["step"], s["loss"]) for s in steps] == \
        [(s["epoch"], s["step"], s["loss"]) for s in _lines(runs["off"])]
    checks = [line for line in _lines(runs["on"]) if "knn_top1" in line]
    last_step = max(s["step"] for s in steps)
    assert [(c["epoch"], c["step"]) for c in checks] == [(0, last_step), (1, last_step)]
    assert all(0 <= c["knn_top1"] <= c["knn_top5"] <= 100 for c in checks)
    summary = json.loads((runs["on"] / "summary.json").read_text())
    assert [h["epoch"] for h in summary["knn"]] == [1, 2] and summary["knn"][-1]["top1"] == checks[-1]["knn_top1"]
    assert json.loads((runs["off"] / "summary.json").read_text())["knn"] == []
    # the same numbers as TensorBoard scalars, beside metrics.jsonl, at the global step
    board = tensorboard_scalars(runs["on"] / "tensorboard")
    assert [v for _, v in board["pretrain/knn_top1"]] == pytest.approx([c["knn_top1"] for c in checks])
    assert [step for step, _ in board["pretrain/knn_top1"]] == [last_step, 2 * last_step]
    assert [v for _, v in board["pretrain/loss"]] == pytest.approx([s["loss"] for s in steps])


def test_flatmix_knn_on_one_and_two_processes_agrees_with_the_monitor(runs, synth_root, tmp_path):
    """The final check of the monitor and `flatmix knn` read the same backbone at the run's image size; two
    processes split the bank and the queries and find the same neighbours."""
    checkpoint = runs["on"] / "checkpoint.pth"
    args = ["knn", "--backbone", checkpoint, "--data", synth_root / "imagenet", "--image-size", "32", "--batch-size",
            "32", "--workers", "1"]
    one = run_flatmix(*args, "--out", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(*args, "--out", tmp_path / "two")
    metrics = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("one", "two")]
    assert (metrics[0]["processes"], metrics[1]["processes"]) == (1, 2)
    for key in ("top1", "top5", "bank_images", "val_images", "classes", "k", "t"):
        assert metrics[0][key] == metrics[1][key], key
    assert metrics[0]["top1"] == json.loads((runs["on"] / "summary.json").read_text())["knn"][-1]["top1"]
    assert metrics[0]["provenance"]["git_commit"] and two.stderr.count("knn batch") >= 1
    board = tensorboard_scalars(tmp_path / "one" / "tensorboard")
    assert board["knn/top1"] == [(0, pytest.approx(metrics[0]["top1"]))]


def _torchrun(*args):
    import subprocess
    result = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "flatmix",
                             *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_a_stop_during_a_check_resumes_with_that_check_first(synth_root, tmp_path, runs, monkeypatch):
    """A stop signal in the middle of the first check: last.pth holds epoch 1 without it and the run exits 143;
    the continued run does that check, then trains on, and ends as the uninterrupted run did."""
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    evaluate = knn.KnnMonitor.evaluate

    def signalled_once(self, model, stop):
        monkeypatch.setattr(knn.KnnMonitor, "evaluate", evaluate)
        signal.raise_signal(signal.SIGTERM)  # the run's StopFlag takes it; the check stops after a batch
        return evaluate(self, model, stop)

    monkeypatch.setattr(knn.KnnMonitor, "evaluate", signalled_once)
    spec = _spec(synth_root / "imagenet", "data.workers=2", "train.knn_every=1")
    try:
        with pytest.raises(SystemExit) as stopped:
            pretrain.run(spec, tmp_path)
        assert stopped.value.code == 143
        state = torch.load(tmp_path / "last.pth", weights_only=True)
        assert (state["epoch"], state["step"], state["knn"]) == (1, 0, [])
        pretrain.run(spec, tmp_path)
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    _assert_same_weights(tmp_path / "checkpoint.pth", runs["on"] / "checkpoint.pth")
    assert [(line["epoch"], line["step"]) for line in _lines(tmp_path)] == \
        [(line["epoch"], line["step"]) for line in _lines(runs["on"])]
    board, reference = (tensorboard_scalars(folder / "tensorboard") for folder in (tmp_path, runs["on"]))
    assert [step for step, _ in board["pretrain/knn_top1"]] == [step for step, _ in reference["pretrain/knn_top1"]]


def test_monitor_settings_do_not_stop_a_run_from_continuing(synth_root, tmp_path, runs):
    """They only watch the run: a run continues (or counts as done) whatever they became."""
    result = run_flatmix(*_pretrain_args(synth_root / "imagenet", runs["off"], "model.arch=resnet_tiny",
                                         "train.epochs=2", "data.workers=2", "train.knn_every=2"))
    assert result.returncode == 0 and "already complete" in result.stdout, result.stderr[-2000:]


@pytest.mark.parametrize("args,fragments", [
    (["--k", "0"], ["--k", "0"]),
    (["--t", "-1"], ["--t"]),
    (["--max-images", "0"], ["--max-images"]),
])
def test_flatmix_knn_refuses_bad_numbers(args, fragments, runs, synth_root, tmp_path):
    result = run_flatmix("knn", "--backbone", runs["on"] / "checkpoint.pth", "--data", synth_root / "imagenet",
                         "--out", tmp_path / "k", *args)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "k").exists()


def test_knn_without_val_says_so_in_one_line(runs, synth_root, tmp_path):
    train_only = tmp_path / "data"
    train_only.mkdir()
    (train_only / "train").symlink_to(synth_root / "imagenet" / "train")
    assert_one_line_error(run_flatmix("knn", "--backbone", runs["on"] / "checkpoint.pth", "--data", train_only,
                                      "--out", tmp_path / "k"), str(train_only / "val"))
    result = run_flatmix(*_pretrain_args(train_only, tmp_path / "run", "model.arch=resnet_tiny", "train.knn_every=1"))
    assert_one_line_error(result, "train.knn_every 1", str(train_only / "val"), "train.knn_every=0")


@pytest.mark.parametrize("setting,fragment", [("train.knn_t=0", "train.knn_t"), ("train.knn_k=0", "train.knn_k"),
                                              ("train.knn_max_images=0", "train.knn_max_images"),
                                              ("train.knn_every=-1", "train.knn_every")])
def test_bad_monitor_settings_are_refused_before_any_work(setting, fragment, synth_root, tmp_path):
    result = run_flatmix(*_pretrain_args(synth_root / "imagenet", tmp_path / "run", setting))
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()
