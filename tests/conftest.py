"""Shared fixtures: the embedded data set (made once per session) and a runner for the CLI."""

import os
from pathlib import Path
import subprocess
import sys

import pytest

from flatmix.data.synth import synthesise

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A small embedded data set shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("synth")
    synthesise(root, seed=0, size=32, train_per_class=2, val_per_class=1, voc_images=6, coco_images=6)
    return root


def wheel_cache():
    """Where envs/install.sh keeps the mmcv wheel it built (FLATMIX_WHEEL_CACHE, else under XDG_CACHE_HOME)."""
    return Path(os.environ.get("FLATMIX_WHEEL_CACHE") or (
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "flatmix" / "wheels"))


def run_flatmix(*args, cwd=None):
    """Run the `flatmix` console script as a user would; returns the CompletedProcess."""
    exe = Path(sys.executable).parent / "flatmix"
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, cwd=cwd)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the groups
def pytest_collection_modifyitems(items):
    """The suite runs on two pytest-xdist workers (pyproject's addopts), by groups: a module's tests run on
    one worker, so that its module fixtures are made once, and the modules that need the image (the SLURM
    tests among them) form one group, so that the image is built and the SLURM cluster started once. The
    longest groups go first: the image's, then the modules with slow tests."""
    imaged = {item.module for item in items if "image" in item.fixturenames}
    slow = {item.module for item in items if item.get_closest_marker("slow")}
    for item in items:
        item.add_marker(pytest.mark.xdist_group("image" if item.module in imaged else item.module.__name__))
    items.sort(key=lambda item: (item.module not in imaged, item.module not in slow))


def tensorboard_scalars(folder):
    """{tag: [(step, value)]} of the TensorBoard event files in `folder`, read by TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(folder))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def assert_one_line_error(result, *fragments):
    """A bad-input failure: non-zero exit, one line on stderr naming the problem, no traceback."""
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="session")
def image(tmp_path_factory):
    """(Podman, tag) of the flatmix image built here from containers/Dockerfile (tests/container_engine.py);
    the test skips, saying why, where podman cannot run here, and fails where the Dockerfile does not build
    (a skip there hid a broken image for two CI runs)."""
    from container_engine import EngineUnavailable, ImageBuildFailed, Podman
    engine = Podman(tmp_path_factory.mktemp("podman"))
    try:
        return engine.start(), engine.flatmix_image()
    except EngineUnavailable as e:
        pytest.skip(f"podman cannot run the flatmix image here: {e}")
    except ImageBuildFailed as e:
        pytest.fail(f"containers/Dockerfile does not build: {e}")
