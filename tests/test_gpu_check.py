"""tools/gpu-check on the CPU with tiny sizes, end to end, so that the GPU machine's one short run cannot rot.

Its install part is left out: here the project's venv already has mmcv, mmdet and flatmix (`run` uses
the flatmix of the Python that runs it)."""

import json
import subprocess
import sys

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "tools"))
import gpu_check  # noqa: E402

pytestmark = pytest.mark.slow


def test_every_stage_runs_or_says_why_not_on_the_cpu(tmp_path):
    result = subprocess.run([sys.executable, str(REPO / "tools" / "gpu-check"), "run", "--device", "cpu", "--tiny",
                             "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    expected = [gpu_check._name(stage) for stages, _, _ in gpu_check.PHASES for stage in stages]
    assert sorted(s["stage"] for s in summary["stages"]) == sorted(expected)
    for stage in summary["stages"]:
        status = stage["status"]
        assert status == "ok" or (status.startswith("skipped (cpu: ") and len(status) > 20), stage
        assert stage["seconds"] >= 0
    for name in ("detect-syncbn", "bench-synthetic-compiled", "bench-gpu-compiled"):  # CUDA only
        assert next(s for s in summary["stages"] if s["stage"] == name)["status"].startswith("skipped (cpu: ")
    table = result.stdout[result.stdout.index("\nstage ") + 1:]
    assert table.splitlines()[0].split() == ["stage", "status", "seconds", "key", "numbers"]
    for name in expected:
        assert f"\n{name} " in table
    log = (tmp_path / "out" / "gpu-check.log").read_text()
    assert "===== pretrain-sigterm-resume: ok" in log
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu-check.json", "gpu-check.log"]


def test_versions_come_from_the_pinned_files():
    pins = gpu_check.pins()
    for name in (*gpu_check.CARRIED, "mmcv"):
        assert gpu_check._normalised(name) in pins, name
    assert gpu_check.build_setuptools()
