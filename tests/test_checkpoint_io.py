"""Reading checkpoints: whatever the bytes, a checkpoint or one line naming the file; no code from the file
runs; a backbone with a NaN or Inf is refused; linear's own last.pth goes through the same loader."""

import io
import pickle
import random
import warnings
import zipfile

from PIL import Image
import pytest
import torch

from flatmix.checkpoint_io import load_checkpoint
from flatmix.errors import FlatmixError
from flatmix.models.resnet import build_resnet
from conftest import assert_one_line_error, run_flatmix


class Planted:
    """Unpickling this creates `marker`: what a hostile checkpoint could do with any callable."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class Payload:
    """A class no allowlist names."""


def _real():
    """A small real checkpoint (torch's zip format) of a MoCo-like layout."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8))
    buf = io.BytesIO()
    torch.save({"state_dict": net.state_dict(), "epoch": 3}, buf)
    return buf.getvalue()


def _replace_member(data, suffix, content):
    """The zip `data` with the member ending in `suffix` replaced (a valid zip, a corrupt checkpoint)."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, content if info.filename.endswith(suffix) else src.read(info))
    return out.getvalue()


def _corpus():
    """Seeded: random bytes, every 1/50 truncation and single-bit flips of a real checkpoint, zips with a
    corrupt member, and a few hand-made cases."""
    rng = random.Random(0)
    real = _real()
    corpus = [rng.randbytes(4096) for _ in range(400)]
    corpus += [real[:n] for n in range(0, len(real), len(real) // 50)]
    for _ in range(300):
        flipped = bytearray(real)
        flipped[rng.randrange(len(real))] ^= 1 << rng.randrange(8)
        corpus.append(bytes(flipped))
    corpus += [_replace_member(real, "data.pkl", rng.randbytes(200)), _replace_member(real, "data/0", b"\0" * 5),
               _replace_member(real, "data.pkl", b"")]
    corpus += [b"", b"PK", b"\x80\x02", pickle.dumps({"epoch": 1}, protocol=4)]
    return corpus


def test_any_bytes_give_the_checkpoint_or_one_line_naming_the_file(tmp_path):
    path = tmp_path / "fuzz.pth"
    refused = 0
    for data in _corpus():
        path.write_bytes(data)
        try:
            load_checkpoint(path)  # a bit flip inside a tensor's data still loads
        except FlatmixError as e:
            refused += 1
            assert str(e).startswith(str(path)) and len(str(e).splitlines()) == 1, str(e)
    assert refused > 400
    for path, reason in ((tmp_path, "not a checkpoint file"), (tmp_path / "absent.pth", "no such checkpoint file")):
        with pytest.raises(FlatmixError) as e:
            load_checkpoint(path)
        assert str(e.value) == f"{path}: {reason}"
    # pickles that reference globals: refused by name, and no code from the file runs
    marker = tmp_path / "marker"
    torch.save({"state_dict": {}, "x": Planted(marker)}, tmp_path / "planted.pth")
    (tmp_path / "planted.pkl").write_bytes(pickle.dumps({"x": Planted(marker)}, protocol=2))
    torch.save({"x": Payload()}, tmp_path / "payload.pth")
    for name, refused_global in (("planted.pth", "open"), ("planted.pkl", "open"), ("payload.pth", "Payload")):
        with pytest.raises(FlatmixError, match=f"{name}: refused to unpickle .*{refused_global}"):
            load_checkpoint(tmp_path / name)
    assert not marker.exists()


def test_cli_one_line_for_every_kind_of_failure(tmp_path):
    """One file per exception type torch.load raises on the corpus, plus a pickle that makes torch warn."""
    samples = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for data in _corpus():
            try:
                torch.load(io.BytesIO(data), weights_only=True)
            except Exception as e:
                samples.setdefault(type(e).__name__, data)
    assert {"UnpicklingError", "IndexError", "KeyError", "UnicodeDecodeError", "RuntimeError"} <= set(samples)
    samples["protocol 4 warning"] = pickle.dumps({"epoch": 1}, protocol=4)
    for i, data in enumerate(samples.values()):
        src = tmp_path / f"bad{i}.pth"
        src.write_bytes(data)
        assert_one_line_error(run_flatmix("convert", src, "--to", "torchvision", "--out", tmp_path / "o.pth"),
                              str(src))
        assert not (tmp_path / "o.pth").exists()


def test_convert_refuses_nan_and_inf_naming_the_first(tmp_path):
    state = build_resnet("resnet_tiny").state_dict()
    state["layer1.0.bn2.running_var"][3] = float("inf")
    state["layer3.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "diverged.pth")
    result = run_flatmix("convert", tmp_path / "diverged.pth", "--to", "torchvision", "--out", tmp_path / "o.pth")
    assert_one_line_error(result, "diverged.pth", "layer1.0.bn2.running_var", "NaN or Inf")
    assert result.returncode == 2 and "layer3" not in result.stderr
    assert not (tmp_path / "o.pth").exists()


def test_linear_refuses_a_corrupt_last_pth(tmp_path):
    torch.save(build_resnet("resnet_tiny").state_dict(), tmp_path / "backbone.pth")
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            Image.new("RGB", (16, 16), (200, 10, 10)).save(tmp_path / "data" / split / cls / "x.png")
    (tmp_path / "probe").mkdir()
    (tmp_path / "probe" / "last.pth").write_bytes(_real()[:-100])  # a save cut short
    result = run_flatmix("linear", "--backbone", tmp_path / "backbone.pth", "--data", tmp_path / "data",
                         "--out", tmp_path / "probe", "--epochs", 1, "--batch-size", 2, "--image-size", 16,
                         "--workers", 0)
    assert_one_line_error(result, str(tmp_path / "probe" / "last.pth"), "not a readable checkpoint")
    assert result.returncode == 2
