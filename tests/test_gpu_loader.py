"""The GPU loader (data.loader: gpu) against the reference PIL path, on CPU tensors: the same random
parameters (exactly, per sample, and in distribution), nearly the same pixels, torchvision's colour ops,
the odd files, training through the prefetch thread, and the benchmark."""

import json

import numpy as np
from PIL import Image
import pytest
from scipy.stats import ks_2samp
import torch
from torchvision import transforms as T
import torchvision.transforms.functional as TF
import torchvision.transforms.v2.functional as F2

from conftest import assert_one_line_error, run_flatmix
from flatmix.bench import write_jpegs
from flatmix.data import gpu_augment as G
from flatmix.data.augment import AugmentedImages, cmc_transform, moco_transform
from flatmix.data.encoded import EncodedImages, collate, decode

RECIPES = {"moco-v1": lambda size: moco_transform(size, "v1"), "moco-v2": lambda size: moco_transform(size, "v2"),
           "cmc-ycbcr": lambda size: cmc_transform(size, "YCbCr"), "cmc-lab": lambda size: cmc_transform(size, "Lab")}
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory):
    """ImageNet-shaped JPEGs (500 x 375 and the like)."""
    root = tmp_path_factory.mktemp("jpegs")
    write_jpegs(root, 24, classes=3)
    return root


class _Spy:
    """Records the parameters the reference torchvision pipeline draws, as DeviceRecipe's FIELDS."""

    def __init__(self, monkeypatch):
        self.views, self.current = [], None
        for cls in (T.RandomResizedCrop, T.ColorJitter, T.GaussianBlur):
            original = cls.get_params
            monkeypatch.setattr(cls, "get_params", staticmethod(self._recording(cls.__name__, original)))
        for name in ("rgb_to_grayscale", "hflip"):
            original = getattr(TF, name)
            monkeypatch.setattr(TF, name, self._recording(name, original))

    def _recording(self, name, original):
        def record(*args, **kwargs):
            result = original(*args, **kwargs)
            p = self.current
            if name == "RandomResizedCrop":
                p[0:4] = torch.tensor(result, dtype=p.dtype)
            elif name == "ColorJitter":
                order, *factors = result
                p[G.COLUMN["jitter"]] = 1
                p[G.COLUMN["order0"]:G.COLUMN["order3"] + 1] = order.to(p.dtype)
                for field, factor in zip(("brightness", "contrast", "saturation", "hue"), factors):
                    p[G.COLUMN[field]] = factor
            elif name == "GaussianBlur":
                p[G.COLUMN["blur"]], p[G.COLUMN["sigma"]] = 1, result
            else:
                p[G.COLUMN["grayscale" if name == "rgb_to_grayscale" else "flip"]] = 1
            return result
        return record

    def view(self, transform, image):
        self.current = torch.zeros(len(G.FIELDS))
        for field, value in (("brightness", 1.0), ("contrast", 1.0), ("saturation", 1.0)):
            self.current[G.COLUMN[field]] = value
        transform(image)
        self.views.append(self.current)


@pytest.mark.parametrize("recipe", ["moco-v1", "moco-v2", "cmc-ycbcr"])
def test_gpu_loader_draws_exactly_the_reference_parameters(jpegs, monkeypatch, recipe):
    transform = RECIPES[recipe](64)
    views = 1 if recipe.startswith("cmc") else 2
    device_draws = EncodedImages(jpegs / "train", G.DeviceRecipe(transform), views, seed=7)
    drawn = {}
    for epoch in (0, 3):
        device_draws.set_epoch(epoch)
        for index in range(len(device_draws)):
            drawn[epoch, index] = device_draws[index][2]
    reference = AugmentedImages(jpegs / "train", transform, views, seed=7)
    with monkeypatch.context() as m:
        spy = _Spy(m)
        reference.transform = lambda image: spy.view(transform, image)
        for (epoch, index), params in drawn.items():
            reference.set_epoch(epoch)
            spy.views.clear()
            reference[index]
            torch.testing.assert_close(torch.stack(spy.views), params, rtol=0, atol=1e-6,
                                       msg=f"{recipe}, epoch {epoch}, image {index}")


@pytest.mark.parametrize("recipe", ["moco-v1", "moco-v2", "cmc-ycbcr"])
def test_gpu_loader_parameter_distributions_match_the_pil_path(monkeypatch, recipe):
    """Independent draws of both paths (different seeds): crop area and aspect, jitter factors and order,
    grayscale, flip, jitter and blur rates agree (two-sample KS tests, rates within 0.04)."""
    transform, n, height, width = RECIPES[recipe](32), 1500, 375, 500
    image = Image.new("RGB", (width, height), (120, 80, 40))
    recipe_draws = G.DeviceRecipe(transform)
    torch.manual_seed(1)
    ours = torch.stack([recipe_draws.draw(height, width) for _ in range(n)])
    with monkeypatch.context() as m:
        spy = _Spy(m)
        torch.manual_seed(2)
        for _ in range(n):
            spy.view(transform, image)
    theirs = torch.stack(spy.views)

    def stats(p):
        col = lambda name: p[:, G.COLUMN[name]]  # noqa: E731
        jittered = col("jitter") > 0
        out = {"area": (col("height") * col("width") / (height * width)),
               "log_aspect": torch.log(col("width") / col("height")),
               "first_op": col("order0")[jittered]}
        out.update({name: col(name)[jittered] for name in ("brightness", "contrast", "saturation", "hue")})
        out["sigma"] = col("sigma")[col("blur") > 0]
        rates = {name: col(name).mean().item() for name in ("grayscale", "flip", "jitter", "blur")}
        return out, rates

    (ours_c, ours_r), (theirs_c, theirs_r) = stats(ours), stats(theirs)
    for name in ours_c:
        if len(theirs_c[name]) == 0:
            assert len(ours_c[name]) == 0, name
            continue
        assert ks_2samp(ours_c[name].numpy(), theirs_c[name].numpy()).pvalue > 0.01, name
    for name in ours_r:
        assert abs(ours_r[name] - theirs_r[name]) < 0.04, (name, ours_r[name], theirs_r[name])
    scale = transform.transforms[0].scale
    assert scale[0] - 0.01 <= ours_c["area"].min() and ours_c["area"].max() <= 1.0
    assert ours_c["log_aspect"].abs().max() <= np.log(4 / 3) + 0.01


def _crop_only(size):
    return T.Compose([T.RandomResizedCrop(size, scale=(0.08, 1.0)), T.RandomHorizontalFlip(), T.ToTensor(),
                      T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])


# Mean absolute difference allowed, in normalised units (MoCo's std is ~0.226 of [0, 1]: 0.01 ~ 0.6 grey
# levels). Measured: crops 0.26-0.29 grey levels from PIL's (its 8-bit rounding between the two resize
# passes); MoCo v1 0.026 (PIL's 8-bit HSV hue), v2 0.018, CMC 0.002. The jitter ops in a fixed order
# instead of each sample's gives 0.045, no grayscale 0.117, crops 2 pixels off 0.076.
TOLERANCE = {"crop": 0.01, "moco-v1": 0.035, "moco-v2": 0.035, "cmc-ycbcr": 0.005, "cmc-lab": 0.005}


@pytest.mark.parametrize("recipe", list(TOLERANCE))
def test_gpu_path_pixels_match_the_pil_path(jpegs, recipe):
    """Same parameters, so the views differ only by 8-bit rounding and PIL's integer colour ops."""
    transform = {**RECIPES, "crop": _crop_only}[recipe](64)
    views = 2 if recipe.startswith("moco") else 1
    ours = EncodedImages(jpegs / "train", G.DeviceRecipe(transform), views, seed=3)
    reference = AugmentedImages(jpegs / "train", transform, views, seed=3)
    payloads, encoded, params, index = collate([ours[i] for i in range(len(ours))])
    assert encoded.all()
    out = ours.recipe(decode(payloads, encoded, CPU), params)
    for v in range(views):
        expected = torch.stack([reference[i][v] for i in index.tolist()])
        assert out[v].shape == expected.shape
        assert (out[v] - expected).abs().mean() < TOLERANCE[recipe], (recipe, v, (out[v] - expected).abs().mean())


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_fp16_working_precision_stays_close_to_fp32(jpegs, recipe):
    """The GPU works in fp16 by default: the same pipeline in fp16 on CPU tensors."""
    transform = RECIPES[recipe](64)
    images = EncodedImages(jpegs / "train", G.DeviceRecipe(transform), 1, seed=5)
    payloads, encoded, params, _ = collate([images[i] for i in range(8)])
    decoded = decode(payloads, encoded, CPU)
    half, single = images.recipe(decoded, params, torch.float16), images.recipe(decoded, params, torch.float32)
    assert half[0].dtype == torch.float32
    assert (half[0] - single[0]).abs().mean() < 0.005, (half[0] - single[0]).abs().mean()


def test_ops_chosen_for_every_sample_or_none(jpegs):
    """A batch where every view is (or no view is) grayscale, flipped, jittered: in-place ops still apply."""
    transform = moco_transform(32, "v1")
    images = EncodedImages(jpegs / "train", G.DeviceRecipe(transform), 1, seed=0)
    payloads, encoded, params, _ = collate([images[i] for i in range(4)])
    decoded = decode(payloads, encoded, CPU)
    for value in (0.0, 1.0):
        forced = params.clone()
        forced[..., [G.COLUMN["grayscale"], G.COLUMN["flip"]]] = value
        out = images.recipe(decoded, forced)[0]
        channels_equal = torch.allclose(out[:, 0] * 0.229 + 0.485, out[:, 1] * 0.224 + 0.456, atol=1e-5)
        assert channels_equal == bool(value) and out.is_contiguous()


def test_colour_ops_equal_torchvisions_with_per_sample_factors():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 20, 24)
    factors = torch.tensor([0.6, 0.8, 1.0, 1.2, 1.4, 0.9])
    hues = torch.tensor([-0.4, -0.2, 0.0, 0.1, 0.3, 0.4])
    ops = [(G.adjust_brightness, F2.adjust_brightness, factors), (G.adjust_contrast, F2.adjust_contrast, factors),
           (G.adjust_saturation, F2.adjust_saturation, factors), (G.adjust_hue, F2.adjust_hue, hues)]
    for ours, theirs, f in ops:
        shaped = f if ours is G.adjust_hue else f.view(-1, 1, 1, 1)
        expected = torch.stack([theirs(x[i], float(f[i])) for i in range(len(x))])
        torch.testing.assert_close(ours(x.clone(), shaped), expected, atol=1e-5, rtol=0, msg=ours.__name__)
    sigma = torch.tensor([0.1, 0.5, 1.0, 1.5, 2.0, 0.7])
    blurred = G.gaussian_blur(x.clone(), torch.ones(6, dtype=torch.bool), sigma, [5, 5])
    expected = torch.stack([F2.gaussian_blur(x[i], [5, 5], [float(s), float(s)]) for i, s in enumerate(sigma)])
    torch.testing.assert_close(blurred, expected, atol=1e-5, rtol=0)


def test_odd_files_are_decoded_by_the_workers(synth_root):
    """PNG bytes under .JPEG, CMYK and grayscale JPEGs: decoded to RGB by the worker, like the PIL path."""
    transform = moco_transform(32, "v1")
    ours = EncodedImages(synth_root / "imagenet" / "train", G.DeviceRecipe(transform), 2, seed=0)
    reference = AugmentedImages(synth_root / "imagenet" / "train", transform, 2, seed=0)
    odd = [i for i, path in enumerate(ours.paths) if path.endswith(("_png.JPEG", "_cmyk.JPEG", "_gray.JPEG"))]
    assert len(odd) == 3
    samples = [ours[i] for i in odd]
    assert [encoded for _, encoded, _, _ in samples] == [False] * 3
    payloads, encoded, params, index = collate(samples + [ours[0]])
    assert encoded.tolist() == [False, False, False, True]
    out = ours.recipe(decode(payloads, encoded, CPU), params)
    expected = torch.stack([reference[i][0] for i in index.tolist()])
    assert (out[0] - expected).abs().mean() < TOLERANCE["moco-v1"]


def _pretrain(data, out, *sets):
    args = ["pretrain", "--preset", "smoke-moco-mix", "--set", f"data.root={data}", "--out", out,
            "--set", "data.loader=gpu", "--set", "model.arch=resnet_tiny", "--set", "train.epochs=1"]
    for s in sets:
        args += ["--set", s]
    return run_flatmix(*args)


def test_gpu_loader_trains_the_same_with_and_without_the_prefetch_thread(synth_root, tmp_path):
    """With workers the batches are made in the prefetch thread; without, in the loop: same weights."""
    threaded = _pretrain(synth_root / "imagenet", tmp_path / "threaded", "data.workers=2")
    assert threaded.returncode == 0, threaded.stderr[-3000:]
    inline = _pretrain(synth_root / "imagenet", tmp_path / "inline", "data.workers=0")
    assert inline.returncode == 0, inline.stderr[-3000:]
    a = torch.load(tmp_path / "threaded" / "checkpoint.pth", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "inline" / "checkpoint.pth", weights_only=True)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_loader_is_refused(synth_root, tmp_path):
    assert_one_line_error(_pretrain(synth_root / "imagenet", tmp_path, "data.loader=dali"), "data.loader", "dali")


@pytest.mark.parametrize("loader,ahead", [("pil", 2), ("gpu", 5)])
def test_bench_times_the_loader_and_the_step_in_steady_state(jpegs, loader, ahead):
    """By default a real loader's rows skip its made-ahead batches (1 worker x 2, and for the gpu loader its
    thread's queue of 2 and the batch in hand; at least 5) and time 20x as many; each row says so, with its
    data wait. The gpu loader's parts row times its workers alone, then its device parts."""
    result = run_flatmix("bench", "pretrain", "--device", "cpu", "--arch", "resnet_tiny", "--batch-size", "4",
                         "--image-size", "32", "-K", "64", "--loader", loader, "--data", jpegs, "--workers", "1",
                         "--precision", "fp32")
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    parts = [("loader_parts", False)] if loader == "gpu" else []
    assert [(r["stage"], r["mixture"]) for r in lines] == [("loader", False), *parts, ("train", False),
                                                           ("train", True), ("mixer", True)]
    assert lines[-1]["mixer_calls"] == min(20 * ahead, 20) and 0 < lines[-1]["step_share"]
    if parts:  # the workers alone, and the device's parts of the last 20 batches of 4 pairs
        p = lines.pop(1)
        assert p["part_calls"] == 20 and p["workers_pairs_per_s"] == pytest.approx(4 / p["workers_s_median"], rel=1e-3)
        assert all(p[f"{part}_s_median"] > 0 for part in ("workers", "decode", "resize", "colour"))
        assert max(p["decode_s_median"], p["resize_s_median"], p["colour_s_median"]) <= p["device_s_median"]
    lines = lines[:-1]
    for r in lines:
        assert r["loader"] == loader and r["device"] == "cpu" and r["pairs_per_s"] > 0
        assert (r["batches_ahead"], r["warmup"], r["steps"]) == (ahead, 5, 20 * ahead)
        assert 0 <= r["data_wait"] <= 1
    assert lines[0]["data_wait"] > 0.5  # the loader alone does nothing but wait for its batches


@pytest.mark.parametrize("args,fragments", [
    (["--loader", "gpu"], ["--loader gpu", "--data"]),
    (["--loader", "gpu", "--batch-size", "4096"], ["training images make no batch of train.batch_size 4096"]),
    (["--device", "cuda"], ["cuda"]),
    (["--workers", "16", "--warmup", "3", "--steps", "10"], ["--warmup 3 --steps 10", "32 batches ahead",
                                                            "--warmup 32 --steps 640"]),
    (["--workers", "2", "--loader", "gpu", "--steps", "139"], ["--steps 139", "7 batches ahead", "--steps 140"]),
])
def test_bench_bad_input(args, fragments, jpegs):
    if "cuda" in args and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if "--workers" in args or "--batch-size" in args:
        args = ["--loader", "pil", "--data", jpegs, *args]  # a later --loader wins
    assert_one_line_error(run_flatmix("bench", "pretrain", *args), *fragments)


def test_compiled_encoders_keep_their_keys_and_train():
    from flatmix.distributed import Distributed
    from flatmix.presets import DEFAULTS, PRESETS
    from flatmix.pretrain import build_training, training_step
    from flatmix.runconfig import resolve

    cfg = resolve(DEFAULTS, PRESETS, preset="smoke-moco-mix", sets=["model.arch=resnet_tiny", "train.compile=true"])
    env = Distributed("cpu")
    plain, _, _ = build_training({**cfg, "train": {**cfg["train"], "compile": False}}, env, n_data=64)
    model, optimizer, mixer = build_training(cfg, env, n_data=64)
    assert model.state_dict().keys() == plain.state_dict().keys()
    views = [torch.randn(8, 3, 32, 32) for _ in range(2)]
    losses = [training_step(cfg, model, optimizer, mixer, list(views), torch.arange(8))[0].item() for _ in range(2)]
    assert all(np.isfinite(losses))
