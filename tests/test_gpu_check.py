"""tools/gpu-check on the CPU with tiny sizes, end to end, so that the GPU machine's one short run cannot rot.

`gpu-check all` runs as on the GPU machine, from a venv's Python (this project's), offline: it makes its
own venv over that one, installs flatmix there, then mmcv from the folder (this machine's cached CPU
wheel, as a carried prebuilt one) in the background while the first stages run, and every stage. Only
`prepare` (network) and mmcv's CUDA build are left out."""

import json
import subprocess
import sys

import pytest

from conftest import REPO, wheel_cache

sys.path.insert(0, str(REPO / "tools"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow


def test_every_stage_runs_or_says_why_not_on_the_cpu(tmp_path):
    built = sorted(wheel_cache().glob("mmcv-*-cpu/mmcv-*.whl"))
    assert built, f"no mmcv wheel under {wheel_cache()}: envs/install.sh keeps the one it builds there"
    (tmp_path / "dir" / "wheels").mkdir(parents=True)
    (tmp_path / "dir" / "wheels" / built[-1].name).symlink_to(built[-1])
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gpu-check"), "all", tmp_path / "dir", "--device",
                             "cpu", "--tiny", "--out", tmp_path / "out", "--work", tmp_path / "work"],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert (tmp_path / "dir" / "venv" / "bin" / "flatmix").exists()  # its own venv, flatmix installed there
    summary = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    expected = gpu_check.stage_names()
    assert [s["stage"] for s in summary["stages"]] == expected
    for stage in summary["stages"]:
        status = stage["status"]
        assert status == "ok" or (status.startswith("skipped (cpu: ") and len(status) > 20), stage
        assert stage["seconds"] >= 0
    for name in ("detect-syncbn", "bench-synthetic-compiled", "bench-gpu-compiled"):  # CUDA only
        assert next(s for s in summary["stages"] if s["stage"] == name)["status"].startswith("skipped (cpu: ")
    mmcv = next(s for s in summary["stages"] if s["stage"] == "mmcv")
    assert "mmcv " in mmcv["numbers"] and "mmcv import check" in mmcv["numbers"], mmcv
    assert "feature-norm probe" in next(s for s in summary["stages"] if s["stage"] == "linear")["numbers"]
    table = result.stdout[result.stdout.index("\nstage ") + 1:]
    assert table.splitlines()[0].split() == ["stage", "status", "seconds", "key", "numbers"]
    for name in expected:
        assert f"\n{name} " in table
    log = (tmp_path / "out" / "gpu-check.log").read_text()
    assert "===== pretrain-sigterm-resume: ok" in log
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu-check.json", "gpu-check.log",
                                                                     "install.json", "install.log"]


def test_versions_come_from_the_pinned_files():
    pins = gpu_check.pins()
    for name in (*gpu_check.CARRIED, "mmcv"):
        assert gpu_check._normalised(name) in pins, name
    assert gpu_check.build_setuptools()


def test_install_makes_a_venv_that_sees_a_venvs_torch(tmp_path):
    """The GPU machine's python3 is itself a venv (its torch in that venv's site-packages): the check's
    venv, made from it, must still import torch, and this venv's flatmix, from there."""
    assert sys.prefix != sys.base_prefix  # the suite runs from the project's venv, itself a venv
    _, ok, _ = gpu_check.make_venv(tmp_path / "venv", tmp_path / "install.log")
    assert ok, (tmp_path / "install.log").read_text()
    code = "import torch, flatmix; print(torch.__file__)"
    result = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    import torch
    assert result.stdout.strip() == torch.__file__


def test_a_failed_install_step_prints_why(tmp_path, capsys):
    label, ok, _ = gpu_check._timed("import check", [sys.executable, "-c", "import no_such_module_here"],
                                    tmp_path / "install.log")
    assert not ok
    assert "No module named 'no_such_module_here'" in capsys.readouterr().out
