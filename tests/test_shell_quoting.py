"""Config paths reach the rules' shell commands as plain arguments: folders whose names hold a space,
quotes, `$(...)`, `;` and backticks run through real rules, and every rule's command keeps them whole and
never runs what they hold."""

import json
from pathlib import Path
import shlex
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from flatmix.models.resnet import build_resnet
from test_workflow import _config_with, snakemake

# no braces: Snakemake reads them as wildcards
HOSTILE = "we ird 'sq' \"dq\" $(touch PWNED); `touch PWNED` x"
RESULTS = f"{HOSTILE}/results"
RULES = {"synth", "prepare_imagenet", "prepare_detection", "pretrain", "linear", "convert", "flatness", "detect",
         "report"}


def hostile_config(tmp_path, **changes):
    """The smoke preset with results, the ImageNet and VOC roots, the class list and an outside
    checkpoint under the hostile folder (COCO stays synthetic, so that `synth` runs)."""
    hostile = tmp_path / HOSTILE
    return _config_with(tmp_path, **{
        "results": RESULTS, "data.imagenet": str(hostile / "imagenet"), "data.voc": str(hostile / "VOCdevkit"),
        "data.class_list": str(hostile / "classes.txt"),
        "transfer.checkpoints": {"outside": str(hostile / "outside.pth")}, **changes})


def active_substitutions(command):
    """The `$(` and backticks a POSIX shell would expand: those outside single quotes."""
    found, quote, i = [], None, 0
    while i < len(command):
        c = command[i]
        if quote == "'":
            quote = None if c == "'" else quote
        elif c == "\\":
            i += 1
        elif c in "'\"":
            quote = None if quote == c else quote or c
        elif c == "`" or command.startswith("$(", i):
            found.append(command[i:i + 12])
        i += 1
    return found


def test_every_rule_command_keeps_hostile_paths_whole(tmp_path):
    """A dry run prints each rule's command: split as a shell would, each hostile path is one argument."""
    (tmp_path / HOSTILE).mkdir()
    (tmp_path / HOSTILE / "outside.pth").write_bytes(b"")
    result = snakemake("-n", "-p", "all", f"{RESULTS}/smoke/convert/outside/backbone-mmdet.pth",
                       "--configfile", str(hostile_config(tmp_path)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    rules = {line.split()[1].rstrip(":") for line in lines if line.startswith(("rule ", "localrule "))}
    assert RULES <= rules, rules
    commands = [line.removeprefix("Shell command: ") for line in lines
                if line.startswith("Shell command: ") and line != "Shell command: None"]  # None: rule all
    assert len(commands) >= len(RULES)
    as_json = json.dumps(HOSTILE)[1:-1]  # the report's config holds the paths in JSON
    for command in commands:
        assert active_substitutions(command) == [], command
        arguments = shlex.split(command)
        assert any(HOSTILE in a for a in arguments), command  # every rule writes under results
        assert all(HOSTILE in a or as_json in a for a in arguments if "PWNED" in a), command


def test_hostile_paths_run_as_plain_arguments(tmp_path, synth_root):
    """synth, the three prepares (with a class list) and a conversion of an outside checkpoint, all at
    hostile paths: every job succeeds, writes where it should and runs nothing of the names."""
    hostile = tmp_path / HOSTILE
    for sub in ("imagenet", "VOCdevkit"):
        shutil.copytree(synth_root / sub, hostile / sub)
    shutil.copy(REPO / "src" / "flatmix" / "resources" / "imagenet100.txt", hostile / "classes.txt")
    torch.save(build_resnet("resnet_tiny").state_dict(), hostile / "outside.pth")
    config = hostile_config(tmp_path, synth={"seed": 0, "size": 16, "train_per_class": 1, "val_per_class": 1,
                                             "voc_images": 2, "coco_images": 2})
    outputs = [f"{RESULTS}/data/prepared/{d}/manifest.json" for d in ("imagenet100", "voc")]
    outputs += [f"{RESULTS}/data/synth-prepared/coco/manifest.json",  # COCO stays synthetic
                f"{RESULTS}/smoke/convert/outside/backbone-torchvision.pth",
                f"{RESULTS}/smoke/pretrain/smoke-cmc/checkpoint.pth"]
    result = snakemake("--profile", str(REPO / "workflow" / "profiles" / "local"), *outputs,
                       "--configfile", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert all((tmp_path / o).is_file() for o in outputs)
    manifest = json.loads((tmp_path / outputs[0]).read_text())
    assert manifest["classes"] == 100 and manifest["source"] == str(hostile / "imagenet")
    assert json.loads((tmp_path / RESULTS / "data" / "synth" / "synth.json").read_text())
    checkpoint = torch.load(tmp_path / outputs[-1], weights_only=True)
    assert checkpoint["config"]["data"]["root"] == f"{RESULTS}/data/prepared/imagenet100"
    assert list(tmp_path.rglob("PWNED")) == [] and not (REPO / "PWNED").exists()


@pytest.mark.container
def test_container_binds_hostile_data_root(image, tmp_path, synth_root):
    """Under --sdm apptainer (tests/apptainer_on_podman, in the image built here), a hostile data root is
    bound into the container as one argument and read by the rule there."""
    engine, tag = image
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    env = engine.apptainer(fake_bin, tag)
    shutil.copytree(synth_root / "imagenet", tmp_path / HOSTILE / "imagenet")
    (tmp_path / "flatmix.sif").touch()
    config = _config_with(tmp_path, **{"results": RESULTS, "container.image": str(tmp_path / "flatmix.sif"),
                                       "data.imagenet": str(tmp_path / HOSTILE / "imagenet")})
    target = f"{RESULTS}/data/prepared/imagenet100/manifest.json"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path),
         "-c1", "--sdm", "apptainer", "--apptainer-args=--nv", target, "--configfile", str(config)],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / target).is_file() and (fake_bin / "apptainer.log").read_text().count("exec ") == 1
    assert list(tmp_path.rglob("PWNED")) == []


def test_apptainer_refuses_an_unbindable_root(tmp_path):
    """Apptainer's --bind splits at ',' and ':' whatever the quoting: such a root is refused, naming the key."""
    config = _config_with(tmp_path, **{"data.voc": "/data/VOC,2007"})
    result = snakemake("-n", "--sdm", "apptainer", "--configfile", str(config), cwd=tmp_path)
    assert result.returncode != 0 and "flatmix: error: data.voc:" in result.stderr, result.stderr[-2000:]


def test_container_image_must_be_a_plain_path_or_uri(tmp_path):
    """Snakemake puts the image unquoted into `apptainer exec`: the schema refuses what a shell would read."""
    bad = snakemake("-n", "--configfile", str(_config_with(tmp_path, **{"container.image": "img$(id>PWNED).sif"})),
                    cwd=tmp_path)
    assert bad.returncode != 0 and "image" in bad.stdout + bad.stderr, bad.stderr[-2000:]
    uri = "docker://ghcr.io/lab/flatmix:0.1.0@sha256:" + "0" * 64
    good = snakemake("-n", "--configfile", str(_config_with(tmp_path, **{"container.image": uri})), cwd=tmp_path)
    assert good.returncode == 0, good.stderr[-2000:]
