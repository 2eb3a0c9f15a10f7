"""GPU checks, run where CUDA exists (skipped elsewhere): the MoCo + mixtures step under torchrun in
bf16, with its throughput printed (`pytest -m gpu -s`)."""

import json
from pathlib import Path
import subprocess
import sys

import pytest
import torch

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; none on this machine")]

BIN = Path(sys.executable).parent


def test_moco_mixture_step_under_torchrun_in_bf16():
    result = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=1", "-m", "flatmix",
                             "bench", "pretrain", "--arch", "resnet50", "--batch-size", "256", "--steps", "20",
                             "--precision", "bf16", "-K", "65536"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [r["mixture"] for r in lines] == [False, True]
    for r in lines:
        print(f"MoCo R50 bf16 batch 256, mixture={r['mixture']}: {r['pairs_per_s']} pairs/s on {r['device']}")
        assert r["pairs_per_s"] > 0
