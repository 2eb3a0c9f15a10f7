"""GPU checks, run where CUDA exists (skipped elsewhere), printing the throughput numbers (`pytest -m gpu -s`):
the MoCo + mixtures step under torchrun in bf16 on synthetic data, eager and compiled; both loaders end to
end from ImageNet-like JPEGs; and the GPU loader on CUDA against itself on the CPU."""

import json
from pathlib import Path
import subprocess
import sys

import pytest
import torch

from conftest import run_flatmix
from flatmix.data.augment import moco_transform
from flatmix.data.encoded import EncodedImages, collate, decode
from flatmix.data.gpu_augment import DeviceRecipe

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA; none on this machine")]

BIN = Path(sys.executable).parent
R50 = ["--arch", "resnet50", "--batch-size", "256", "--precision", "bf16", "-K", "65536"]  # real loaders: steady state


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    root = tmp_path_factory.mktemp("jpegs")
    result = run_flatmix("bench", "jpegs", "--out", root, "--images", "8192")
    assert result.returncode == 0, result.stderr[-3000:]
    print(result.stdout.strip())
    return root


def _bench(*args, torchrun=False):
    command = ([str(BIN / "torchrun"), "--standalone", "--nproc_per_node=1", "-m", "flatmix"] if torchrun
               else [str(BIN / "flatmix")])
    result = subprocess.run([*command, "bench", "pretrain", *map(str, args)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    steps = [r for r in lines if r["stage"] != "mixer"]
    for r in steps:
        print(f"MoCo R50 batch {r['batch_size']} loader={r['loader']} stage={r['stage']} compile={r['compile']} "
              f"mixture={r['mixture']}: {r['pairs_per_s']} pairs/s on {r['device_name']}, {r['cpus']} CPUs "
              f"({r['steps']} steps after {r['warmup']}, data-wait {r['data_wait']:.0%})")
    [mixer] = [r for r in lines if r["stage"] == "mixer"]
    print(f"the mixer alone: {mixer['step_share']:.1%} of the mixed step, {mixer['ratio_to_copy']}x a copy of "
          "the views")
    assert all(r["pairs_per_s"] > 0 for r in steps) and 0 < mixer["step_share"] < 1
    return steps


@pytest.mark.parametrize("compiled", [False, True])
def test_moco_mixture_step_under_torchrun_in_bf16(compiled):
    lines = _bench(*R50, "--steps", "20", *(["--compile"] if compiled else []), torchrun=True)
    assert [r["mixture"] for r in lines] == [False, True]


@pytest.mark.parametrize("loader,compiled", [("pil", False), ("gpu", False), ("gpu", True)])
def test_loaders_end_to_end_from_jpegs(jpegs, loader, compiled):
    lines = _bench(*R50, "--loader", loader, "--data", jpegs, *(["--compile"] if compiled else []))
    assert [(r["stage"], r["mixture"]) for r in lines] == [("loader", False), ("train", False), ("train", True)]


def test_gpu_loader_on_cuda_matches_the_cpu(jpegs):
    """nvJPEG and the fp16 resize on the GPU against libjpeg and fp32 on the CPU, same parameters."""
    transform = moco_transform(224, "v1")
    images = EncodedImages(jpegs / "train", DeviceRecipe(transform), 2, seed=0)
    payloads, encoded, params, _ = collate([images[i] for i in range(64)])
    on_gpu = images.recipe(decode(payloads, encoded, torch.device("cuda")), params)
    on_cpu = images.recipe(decode(payloads, encoded, torch.device("cpu")), params)
    for gpu_view, cpu_view in zip(on_gpu, on_cpu):
        difference = (gpu_view.cpu() - cpu_view).abs().mean().item()
        print(f"GPU loader on CUDA vs CPU: mean |difference| {difference:.4f} (normalised units)")
        assert difference < 0.01
