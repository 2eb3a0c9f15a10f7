"""The loader opens what real ImageNet holds: PNG bytes named .JPEG, CMYK and grayscale JPEGs."""

from PIL import Image

from flatmix.data.loading import image_folder, open_rgb


def test_odd_files_come_out_rgb(tmp_path):
    base = Image.new("RGB", (12, 10), (200, 40, 90))
    base.save(tmp_path / "png.JPEG", format="PNG")
    base.convert("CMYK").save(tmp_path / "cmyk.JPEG", format="JPEG")
    base.convert("L").save(tmp_path / "gray.JPEG", format="JPEG")
    for name in ("png", "cmyk", "gray"):
        image = open_rgb(tmp_path / f"{name}.JPEG")
        assert image.mode == "RGB" and image.size == (12, 10)
    r, g, b = open_rgb(tmp_path / "cmyk.JPEG").getpixel((5, 5))
    assert abs(r - 200) < 12 and abs(g - 40) < 12 and abs(b - 90) < 12


def test_image_folder_on_the_synthetic_set(synth_root):
    ds = image_folder(synth_root / "imagenet" / "train")
    assert len(ds.classes) == 106
    odd = [i for i, (p, _) in enumerate(ds.samples) if p.endswith(("_png.JPEG", "_cmyk.JPEG", "_gray.JPEG"))]
    assert len(odd) == 3
    assert all(ds[i][0].mode == "RGB" for i in odd)
