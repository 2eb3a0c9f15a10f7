"""What can be checked of the containers without a container engine: the recipes are pinned and install
exactly envs/ by envs/install.sh, every rule runs in config's image under --sdm apptainer with --nv and
the data roots bound, and results record the image."""

import os
from pathlib import Path
import re
import shutil
import subprocess
import sys

import yaml

from conftest import REPO

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
BASE = re.compile(r"^nvidia/cuda:\d+\.\d+\.\d+-devel-ubuntu\d+\.\d+(@sha256:[0-9a-f]{64})?$")


def test_recipes_pin_the_base_and_install_exactly_envs():
    dockerfile = (REPO / "containers" / "Dockerfile").read_text()
    definition = (REPO / "containers" / "flatmix.def").read_text()
    build = (REPO / "containers" / "build.sh").read_text()
    docker_base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    def_base = re.search(r"^\s+BASE_IMAGE=(\S+)$", definition, re.M).group(1)
    assert BASE.match(docker_base) and def_base == docker_base  # an exact tag, no 'latest', the same in both
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M) and "From: {{ BASE_IMAGE }}" in definition
    for recipe in (dockerfile, definition):
        assert "bash /opt/flatmix/containers/build.sh" in recipe
        assert "pip install" not in recipe and "/opt/flatmix/envs" in recipe
    # the shared steps: OS packages only, then the same install script as the local set-up, with CUDA ops
    assert "bash envs/install.sh" in build and "FORCE_CUDA=1" in build and "pip install" not in build
    assert "TORCH_CUDA_ARCH_LIST" in dockerfile and "TORCH_CUDA_ARCH_LIST" in definition


def test_slurm_profiles():
    plain = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    apptainer = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm-apptainer" / "config.yaml").read_text())
    for profile in (plain, apptainer):
        assert profile["executor"] == "slurm" and profile["slurm-requeue"] is True and profile["retries"] >= 1
    assert "software-deployment-method" not in plain
    assert apptainer["software-deployment-method"] == "apptainer" and "--nv" in apptainer["apptainer-args"].split()


def test_every_rule_runs_in_the_configured_image(tmp_path):
    """--sdm apptainer with a stand-in apptainer: each rule's command goes through `apptainer exec` with the
    configured image, --nv and the data roots bound, and finds the image's flatmix, not this checkout's."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    shutil.copy(REPO / "tests" / "fake_apptainer", fake_bin / "apptainer")
    image = tmp_path / "flatmix.sif"
    image.touch()
    imagenet = tmp_path / "imagenet"
    subprocess.run([str(Path(sys.executable).parent / "flatmix"), "synth", "--out", str(tmp_path / "synth"),
                    "--size", "16", "--train-per-class", "1", "--val-per-class", "1", "--voc-images", "2",
                    "--coco-images", "2"], check=True, capture_output=True)
    (tmp_path / "synth" / "imagenet").rename(imagenet)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"container": {"image": str(image)},
                                      "data": {"imagenet": str(imagenet), "voc": None, "coco": None,
                                               "class_list": None}}))
    log = tmp_path / "apptainer.log"
    env = {**os.environ, "PATH": f"{fake_bin}:{os.environ['PATH']}", "FAKE_APPTAINER_LOG": str(log),
           "FAKE_IMAGE_PATH": str(Path(sys.executable).parent)}
    profile_args = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm-apptainer" / "config.yaml").read_text())
    result = subprocess.run(
        [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-c1", "--sdm", "apptainer",
         f"--apptainer-args={profile_args['apptainer-args']}", "results/data/prepared/imagenet100/manifest.json",
         "results/data/synth-prepared/voc/manifest.json", "--configfile", str(config)],
        capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    calls = [line.split() for line in log.read_text().splitlines() if line.startswith("exec")]
    assert len(calls) == 3  # synth, prepare_imagenet, prepare_detection
    for call in calls:
        assert str(image) in call and "--nv" in call
        assert call[call.index("--bind", call.index("--nv")) + 1] == str(imagenet)
        command = " ".join(call[call.index(str(image)) + 1:])
        assert str(REPO / ".venv") not in command  # the image's own flatmix, not the checkout's


def test_results_record_the_image(monkeypatch):
    from flatmix import provenance
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/flatmix.sif")
    assert provenance.collect()["container_image"] == "/images/flatmix.sif"
    monkeypatch.delenv("APPTAINER_CONTAINER")
    monkeypatch.delenv("SINGULARITY_CONTAINER", raising=False)
    monkeypatch.setenv("FLATMIX_IMAGE", "registry/flatmix:0.1.0")
    assert provenance.collect()["container_image"] == "registry/flatmix:0.1.0"
