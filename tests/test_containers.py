"""The containers: the recipes are pinned to Debian and PyPI alone and install exactly envs/ by envs/install.sh;
the image built from containers/Dockerfile here (tests/container_engine.py) runs each rule under --sdm
apptainer with --nv and the data roots bound; results record the image."""

import functools
import json
import os
from pathlib import Path
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml

from conftest import REPO, wheel_cache

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
BASE = re.compile(r"^debian:bookworm-\d{8}(-slim)?(@sha256:[0-9a-f]{64})?$")


def test_recipes_pin_a_debian_base_and_install_exactly_envs():
    dockerfile = (REPO / "containers" / "Dockerfile").read_text()
    definition = (REPO / "containers" / "flatmix.def").read_text()
    build = (REPO / "containers" / "build.sh").read_text()
    docker_base = re.search(r"^ARG BASE_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    def_base = re.search(r"^\s+BASE_IMAGE=(\S+)$", definition, re.M).group(1)
    assert BASE.match(docker_base) and def_base == docker_base  # a dated Debian tag, the same in both
    assert re.search(r"^FROM \$\{BASE_IMAGE\}$", dockerfile, re.M) and "From: {{ BASE_IMAGE }}" in definition
    for recipe in (dockerfile, definition):
        # the environment layer, then the package's, both by the shared steps; GPUs as build arguments
        assert recipe.index("build.sh environment") < recipe.index("build.sh package")
        assert "pip install" not in recipe and "/opt/flatmix/envs" in recipe
        assert "FORCE_CUDA" in recipe and "TORCH_CUDA_ARCH_LIST" in recipe
        assert "NVIDIA_VISIBLE_DEVICES=all" in recipe and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in recipe
        assert "nvidia/cuda" not in recipe
    # the shared steps: Debian's packages and Python only (no PPA), then the same install script as locally
    assert "bash envs/install.sh" in build and "pip install" not in build
    assert "ppa" not in build.lower() and "add-apt-repository" not in build and "python3.11-venv" in build


def test_install_refuses_an_unknown_part():
    """FLATMIX_INSTALL (the image's two layers) takes all, environment or package; anything else is one line."""
    result = subprocess.run(["bash", str(REPO / "envs" / "install.sh")], capture_output=True, text=True,
                            env={**os.environ, "FLATMIX_INSTALL": "$(touch PWNED)"}, cwd=REPO)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "FLATMIX_INSTALL=$(touch PWNED): not all, environment or package" in result.stderr
    assert not (REPO / "PWNED").exists()


def test_install_says_each_step_and_where_the_mmcv_wheel_came_from():
    """Run again on the suite's own environment (CI's install has just built or reused the wheel): one
    line per step with the seconds so far, the mmcv line naming the cache it installed from."""
    result = subprocess.run(["bash", str(REPO / "envs" / "install.sh")], capture_output=True, text=True,
                            env={**os.environ, "FLATMIX_INSTALL": "environment"}, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stderr.splitlines()
    assert all(re.fullmatch(r"install: .+ \(\d+s\)", line) for line in lines), lines
    assert [line.split(":")[1].split()[0] for line in lines] == ["pip", "mmcv", "envs/"]
    assert f"the cached wheel in {wheel_cache()}" in lines[1]


def test_slurm_profiles():
    plain = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm" / "config.yaml").read_text())
    apptainer = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm-apptainer" / "config.yaml").read_text())
    for profile in (plain, apptainer):
        assert profile["executor"] == "slurm" and profile["slurm-requeue"] is True and profile["retries"] >= 1
    assert "software-deployment-method" not in plain
    assert apptainer["software-deployment-method"] == "apptainer" and "--nv" in apptainer["apptainer-args"].split()


@pytest.mark.container
def test_rules_run_in_the_image_with_the_data_roots_bound(image, tmp_path):
    """--sdm apptainer with `apptainer` on podman: the rule's command runs in the image built from
    containers/Dockerfile, with --nv and the data root bound; the root is outside /tmp (which apptainer binds
    whole), so reading it works only through its bind; the image's flatmix and Python made the result."""
    engine, tag = image
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    env = engine.apptainer(fake_bin, tag)
    sif = tmp_path / "flatmix.sif"
    sif.touch()
    data = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="flatmix-data-"))
    try:
        subprocess.run([str(Path(sys.executable).parent / "flatmix"), "synth", "--out", str(data), "--size", "16",
                        "--train-per-class", "1", "--val-per-class", "1", "--voc-images", "2",
                        "--coco-images", "2"], check=True, capture_output=True)
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump({"container": {"image": str(sif)},
                                          "data": {"imagenet": str(data / "imagenet"), "voc": None, "coco": None,
                                                   "class_list": None}}))
        profile = yaml.safe_load((REPO / "workflow" / "profiles" / "slurm-apptainer" / "config.yaml").read_text())
        target = "results/data/prepared/imagenet100/manifest.json"
        result = subprocess.run(
            [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(tmp_path), "-c1", "--sdm", "apptainer",
             f"--apptainer-args={profile['apptainer-args']}", target, "--configfile", str(config)],
            capture_output=True, text=True, env=env, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    finally:
        shutil.rmtree(data)
    calls = [line.split() for line in (fake_bin / "apptainer.log").read_text().splitlines()
             if line.startswith("exec")]
    assert len(calls) == 1  # prepare_imagenet
    assert str(sif) in calls[0] and "--nv" in calls[0]
    assert calls[0][calls[0].index("--bind", calls[0].index("--nv")) + 1] == str(data / "imagenet")
    manifest = json.loads((tmp_path / target).read_text())
    assert manifest["classes"] == 100 and manifest["train_images"] >= 100
    assert_made_in_the_image(manifest["provenance"], engine, tag, sif)


@functools.cache
def _image_python(engine, tag):
    return engine.podman("run", "--rm", tag, "python", "-c",
                         "import platform; print(platform.python_version())").strip()


def assert_made_in_the_image(record, engine, tag, sif):
    """A result's provenance says it was made in `tag` (run as the image file `sif`), by the image's own
    Python and flatmix: the commit the image was built from, not this checkout's."""
    assert record["container_image"] == str(sif)
    assert record["python"] == _image_python(engine, tag) and record["git_commit"] == f"test-{tag.split(':')[-1]}"


def test_results_record_the_image(monkeypatch):
    from flatmix import provenance
    monkeypatch.setenv("APPTAINER_CONTAINER", "/images/flatmix.sif")
    assert provenance.collect()["container_image"] == "/images/flatmix.sif"
    monkeypatch.delenv("APPTAINER_CONTAINER")
    monkeypatch.delenv("SINGULARITY_CONTAINER", raising=False)
    monkeypatch.setenv("FLATMIX_IMAGE", "registry/flatmix:0.1.0")
    assert provenance.collect()["container_image"] == "registry/flatmix:0.1.0"
