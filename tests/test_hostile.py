"""Hostile but realistic use of the CLI: outputs onto inputs, folders that are not ours, out-of-range numbers,
read-only and full disks, killed writes, umasks. Each case: exit 2, one line naming the problem, nothing
deleted, nothing left under a final name."""

from contextlib import contextmanager
import json
import os
from pathlib import Path
import shutil
import socket
import subprocess

import pytest
import torch

from flatmix.models.resnet import build_resnet
from conftest import assert_one_line_error, run_flatmix


def _tree(root):
    """Every path under root with its bytes (files) or link target, to show that nothing changed."""
    return {str(p.relative_to(root)): os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None
            for p in sorted(root.rglob("*"))}


@pytest.fixture
def backbone(tmp_path):
    """A small torchvision-format ResNet checkpoint (a user's file)."""
    path = tmp_path / "user" / "r50.pth"
    path.parent.mkdir()
    torch.manual_seed(0)
    torch.save({k: v for k, v in build_resnet("resnet_tiny").state_dict().items() if not k.startswith("fc.")}, path)
    return path


# -- flatmix removes only what it made -------------------------------------------------------------------

def test_prepare_with_swapped_roots_deletes_nothing(synth_root, tmp_path):
    """The review's case: P prepared from S, then `--imagenet-root P --out S` (S holds the user's images)."""
    source = tmp_path / "S"
    subprocess.run(["cp", "-r", str(synth_root / "imagenet"), str(source)], check=True)
    prepared = tmp_path / "P"
    assert run_flatmix("prepare", "imagenet100", "--imagenet-root", source, "--out", prepared).returncode == 0
    before = _tree(source)
    assert_one_line_error(run_flatmix("prepare", "imagenet100", "--imagenet-root", prepared, "--out", source),
                          str(source), "did not write")
    assert _tree(source) == before


@pytest.mark.parametrize("layout", ["user-files", "foreign-entry", "around-source"])
def test_prepare_refuses_folders_it_did_not_make(synth_root, tmp_path, layout):
    out = tmp_path / "out"
    if layout == "user-files":  # a folder with train/ and val/ of the user's own
        (out / "train" / "n01").mkdir(parents=True)
        (out / "train" / "n01" / "mine.JPEG").write_bytes(b"precious")
        (out / "val").mkdir()
        fragment = "did not write"
    elif layout == "foreign-entry":  # an earlier output of prepare, with a user's file put beside it
        assert run_flatmix("prepare", "imagenet100", "--imagenet-root", synth_root / "imagenet",
                           "--out", out).returncode == 0
        (out / "notes.txt").write_text("mine")
        fragment = "notes.txt"
    else:  # --out a folder that holds the ImageNet root
        out = synth_root
        fragment = "overlaps"
    before = _tree(out)
    assert_one_line_error(run_flatmix("prepare", "imagenet100", "--imagenet-root", synth_root / "imagenet",
                                      "--out", out), fragment)
    assert _tree(out) == before


@pytest.mark.parametrize("batch_size", [16, 10**30])
def test_pretrain_refuses_a_folder_it_did_not_make(synth_root, tmp_path, batch_size):
    """A user's folder holding a config.yaml and metrics.jsonl of its own: nothing is written into it, also
    when the run would fail later on (a batch larger than the data)."""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.yaml").write_text("my notes")
    (tmp_path / "mine" / "metrics.jsonl").write_text("keep")
    before = _tree(tmp_path / "mine")
    result = run_flatmix("pretrain", "--preset", "smoke-moco", "--set", f"data.root={synth_root / 'imagenet'}",
                         "--set", f"train.batch_size={batch_size}", "--out", tmp_path / "mine")
    assert_one_line_error(result)
    assert _tree(tmp_path / "mine") == before


def test_prepare_refuses_before_changing_anything(synth_root, tmp_path):
    """Its train/ replaced by a link to a user's folder, an earlier output is refused before val/ is rebuilt."""
    out = tmp_path / "in100"
    assert run_flatmix("prepare", "imagenet100", "--imagenet-root", synth_root / "imagenet", "--out", out).returncode == 0
    shutil.rmtree(out / "train")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "photo.JPEG").write_bytes(b"precious")
    os.symlink(tmp_path / "user", out / "train")
    before = _tree(tmp_path)
    assert_one_line_error(run_flatmix("prepare", "imagenet100", "--imagenet-root", synth_root / "imagenet",
                                      "--out", out), "not a folder of links")
    assert _tree(tmp_path) == before


def test_synth_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "imagenet").mkdir()
    (tmp_path / "imagenet" / "photo.JPEG").write_bytes(b"precious")
    assert_one_line_error(run_flatmix("synth", "--out", tmp_path, "--train-per-class", "1"), "did not write")
    assert (tmp_path / "imagenet" / "photo.JPEG").read_bytes() == b"precious"


# -- no output onto an input ----------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["convert-onto-source", "linear-out-is-data", "linear-out-holds-backbone",
                                  "detect-out-in-data", "pretrain-out-holds-config", "prepare-voc-out-in-root",
                                  "flatness-out-holds-backbone"])
def test_outputs_never_land_on_inputs(synth_root, backbone, tmp_path, case):
    config = backbone.parent / "run.yaml"
    config.write_text("train: {epochs: 1}\n")
    args = {
        "convert-onto-source": ["convert", backbone, "--to", "torchvision", "--out", backbone],
        "linear-out-is-data": ["linear", "--backbone", backbone, "--data", backbone.parent, "--out", backbone.parent],
        "linear-out-holds-backbone": ["linear", "--backbone", backbone, "--data", synth_root / "imagenet",
                                      "--out", backbone.parent],
        "detect-out-in-data": ["detect", "voc-faster-rcnn", "--backbone", backbone, "--data", synth_root / "VOCdevkit",
                               "--bn", "frozen", "--out", synth_root / "VOCdevkit" / "det"],
        "pretrain-out-holds-config": ["pretrain", "--preset", "smoke-moco", "--config", config,
                                      "--set", f"data.root={synth_root / 'imagenet'}", "--out", backbone.parent],
        "prepare-voc-out-in-root": ["prepare", "voc", "--root", synth_root / "VOCdevkit",
                                    "--out", synth_root / "VOCdevkit" / "m"],
        "flatness-out-holds-backbone": ["flatness", "--backbone", f"a={backbone}", "--data", synth_root / "imagenet",
                                     "--out", backbone.parent],
    }[case]
    watched = [backbone.parent, synth_root / "VOCdevkit"]
    before = [_tree(w) for w in watched]
    assert_one_line_error(run_flatmix(*args), "overlaps")
    assert [_tree(w) for w in watched] == before


@pytest.mark.parametrize("args,fragment", [
    (["convert", "{ckpt}", "--to", "torchvision", "--out", "{dir}"], "is a folder"),
    (["linear", "--backbone", "{ckpt}", "--data", "{data}", "--out", "{file}"], "is a file"),
])
def test_out_of_the_wrong_kind(synth_root, backbone, tmp_path, args, fragment):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("a user's file")
    values = {"{ckpt}": backbone, "{dir}": tmp_path / "d", "{file}": tmp_path / "f", "{data}": synth_root / "imagenet"}
    assert_one_line_error(run_flatmix(*[values.get(a, a) for a in args]), fragment)
    assert (tmp_path / "f").read_text() == "a user's file" and not any((tmp_path / "d").iterdir())


# -- every number's range, before any work --------------------------------------------------------------

@pytest.mark.parametrize("setting,fragment", [
    ("train.epochs=0", "train.epochs"), ("train.epochs=-1", "train.epochs"),
    ("mixture.global.p=1.5", "mixture.global.p"), ("mixture.region.p=-0.1", "mixture.region.p"),
    ("mixture.region.decay=-0.5", "mixture.region.decay"), ("train.lr=.nan", "train.lr"),
    ("train.lr=.inf", "train.lr"), ("model.dim=0", "model.dim"), ("train.batch_size=0", "train.batch_size"),
    ("data.image_size=0", "data.image_size"), ("moco.K=0", "moco.K"), ("mixture.global.alpha=0", "mixture.global.alpha"),
    ("data.workers=-1", "data.workers"), ("train.milestones=[a]", "train.milestones"),
    ("train.checkpoint_every=0", "train.checkpoint_every"), ("model.arch=resnet7", "model.arch"),
])
def test_run_spec_ranges(synth_root, tmp_path, setting, fragment):
    result = run_flatmix("pretrain", "--preset", "smoke-moco", "--set", f"data.root={synth_root / 'imagenet'}",
                         "--set", setting, "--out", tmp_path / "run")
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args,fragment", [
    (["linear", "--epochs", "0"], "--epochs"), (["linear", "--lr", "nan"], "--lr"),
    (["linear", "--batch-size", "-4"], "--batch-size"), (["linear", "--milestones", "30,x"], "--milestones"),
    (["linear", "--workers", "-1"], "--workers"), (["flatness", "--image-size", "0"], "--image-size"),
    (["synth", "--size", "8"], "--size"), (["synth", "--size", "1000000000000"], "--size"),
    (["plan", "--moco-pairs-per-s", "0"], "--moco-pairs-per-s"),
])
def test_command_line_numbers(tmp_path, args, fragment):
    required = {"linear": ["--backbone", "b", "--data", "d", "--out", tmp_path / "o"],
                "flatness": ["--backbone", "a=b", "--data", "d", "--out", tmp_path / "o"],
                "synth": ["--out", tmp_path / "o"], "plan": []}[args[0]]
    assert_one_line_error(run_flatmix(*args, *required), fragment)
    assert not (tmp_path / "o").exists()


# -- config files -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content,fragment", [
    (b"train: {epochs: 2}\n# \xff\xfe latin-1 comment\n", "UTF-8"),
    (b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
     b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n", "aliases"),
    (b"[" * 100000, "YAML"),
], ids=["latin-1", "alias-bomb", "100k-deep"])
def test_hostile_config_files(synth_root, tmp_path, content, fragment):
    config = tmp_path / "run.yaml"
    config.write_bytes(content)
    for args in (["pretrain", "--config", config, "--set", f"data.root={synth_root / 'imagenet'}",
                  "--out", tmp_path / "run"], ["plan", "--config", config]):
        assert_one_line_error(run_flatmix(*args), str(config), fragment)
    assert not (tmp_path / "run").exists()


# -- disks ----------------------------------------------------------------------------------------------

@contextmanager
def _tmpfs(path, options):
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs (read-only and full disks)")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@pytest.mark.parametrize("options,fragment", [("ro,size=1m", "Read-only"), ("size=24k", "space")])
def test_read_only_and_full_disks(backbone, tmp_path, options, fragment):
    with _tmpfs(tmp_path / "disk", options) as disk:
        result = run_flatmix("convert", backbone, "--to", "torchvision", "--out", disk / "b.pth")
        assert_one_line_error(result, "b.pth", fragment)
        assert not any(disk.iterdir())


# -- partial writes, umask, finished runs ---------------------------------------------------------------

def test_stale_partials_of_dead_writers_are_removed(backbone, tmp_path):
    out = tmp_path / "b.pth"
    host = socket.gethostname()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".b.pth.{host}.{dead.pid}.x1.partial"
    live = tmp_path / f".b.pth.{host}.{os.getpid()}.x2.partial"
    other_host = tmp_path / f".b.pth.elsewhere.{dead.pid}.x3.partial"
    for p in (stale, live, other_host):
        p.write_bytes(b"half")
    assert run_flatmix("convert", backbone, "--to", "torchvision", "--out", out).returncode == 0
    assert not stale.exists() and live.exists() and other_host.exists()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_outputs_follow_the_umask(backbone, tmp_path, umask, mode):
    out = tmp_path / "b.pth"
    exe = Path(os.sys.executable).parent / "flatmix"
    result = subprocess.run([str(exe), "convert", str(backbone), "--to", "torchvision", "--out", str(out)],
                            capture_output=True, text=True, preexec_fn=lambda: os.umask(umask))
    assert result.returncode == 0, result.stderr
    assert out.stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("content", [b"", b"PK", bytes(range(256)) * 8, "list"], ids=["empty", "PK", "bytes", "list"])
def test_corrupt_last_pth_is_one_line(synth_root, tmp_path, content):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".flatmix-owner.json").write_text('{"command": "pretrain"}')  # a run folder of ours
    last = tmp_path / "run" / "last.pth"
    if content == "list":
        torch.save([1, 2, 3], last)
    else:
        last.write_bytes(content)
    result = run_flatmix("pretrain", "--preset", "smoke-moco", "--set", f"data.root={synth_root / 'imagenet'}",
                         "--out", tmp_path / "run")
    assert_one_line_error(result, str(last))
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".flatmix-owner.json", "last.pth"]


@pytest.mark.parametrize("content", [{"format": "flatmix-pretrain/1"}, {"format": "flatmix-pretrain/1", "method": "cmc",
                                                                     "state_dict": {}, "config": [1]}])
def test_plain_data_of_a_wrong_layout_is_one_line(tmp_path, content):
    torch.save(content, tmp_path / "odd.pth")
    assert_one_line_error(run_flatmix("convert", tmp_path / "odd.pth", "--to", "torchvision", "--out", tmp_path / "b.pth"),
                          "odd.pth")
    assert not (tmp_path / "b.pth").exists()


def test_rerun_of_a_finished_run_leaves_it_untouched(synth_root, tmp_path):
    args = ["pretrain", "--preset", "smoke-moco", "--set", f"data.root={synth_root / 'imagenet'}",
            "--set", "model.arch=resnet_tiny", "--set", "train.epochs=1", "--out", tmp_path]
    assert run_flatmix(*args).returncode == 0
    before = _tree(tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert isinstance(summary["final_loss"], float)
    result = run_flatmix(*args)
    assert result.returncode == 0, result.stderr
    assert "already complete" in result.stdout + result.stderr
    assert _tree(tmp_path) == before
