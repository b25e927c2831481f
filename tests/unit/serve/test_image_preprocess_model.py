"""The served image preprocessing (python-backend model file, Pillow + numpy) vs ImagePreprocessor.

Real images: scikit-learn digits (8x8 grey PNGs from the prepared dataset), scikit-learn's sample JPEG
photos and matplotlib's RGBA PNGs, plus conversions of them (16-bit, palette with transparency, CMYK and
grey JPEG, EXIF-rotated JPEG).
"""

import base64
import importlib.util
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from transferkit.data.transforms import ImagePreprocessConfig, ImagePreprocessor
from transferkit.serve import repository

TOLERANCE = 1e-5


def _load_model_module():
    path = repository._MODELS_PKG / "image_preprocess_model.py"
    spec = importlib.util.spec_from_file_location("tk_image_preprocess_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


served = _load_model_module()


def _encode(image, fmt="PNG", **kwargs):
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _sample_files():
    import matplotlib
    import sklearn.datasets

    sk_images = Path(sklearn.datasets.__file__).parent / "images"
    mpl = Path(matplotlib.get_data_path())
    files = {
        "china.jpg": sk_images / "china.jpg",
        "flower.jpg": sk_images / "flower.jpg",
        "logo2.png": mpl / "sample_data" / "logo2.png",
        "blue_pack.png": mpl / "sample_data" / "Minduka_Present_Blue_Pack.png",
        "hand.png": mpl / "images" / "hand.png",
    }
    missing = [str(p) for p in files.values() if not p.is_file()]
    assert not missing, f"sample images missing: {missing}"
    return {name: path.read_bytes() for name, path in files.items()}


@pytest.fixture(scope="module")
def images():
    from tests.unit.serve.image_export import shared_digits_data
    from transferkit.data.prepared import load_prepared

    data = load_prepared(shared_digits_data())
    cases = {f"digit-{i}": png for i, png in enumerate(data.images("test")[:6])}
    files = _sample_files()
    cases.update(files)
    photo = Image.open(io.BytesIO(files["china.jpg"]))
    cases["china-grey.png"] = _encode(photo.convert("L"))
    cases["china-grey.jpg"] = _encode(photo.convert("L"), "JPEG", quality=90)
    cases["china-cmyk.jpg"] = _encode(photo.convert("CMYK"), "JPEG", quality=90)
    cases["china-16bit.png"] = _encode(Image.fromarray(np.asarray(photo.convert("L"), np.uint16) * 257))
    logo = Image.open(io.BytesIO(files["logo2.png"]))
    cases["logo-la.png"] = _encode(logo.convert("LA"))
    palette = logo.convert("RGB").quantize(64)
    cases["logo-palette-transparent.png"] = _encode(palette, transparency=0)
    cases["logo-palette.gif"] = _encode(palette, "GIF")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise when displayed
    cases["china-exif-rotated.jpg"] = _encode(photo.crop((0, 0, 300, 200)), "JPEG", quality=90, exif=exif)
    cases["bilevel.png"] = _encode(photo.convert("1"))
    return cases


CONFIGS = {
    "digits-export": {"image_size": 32, "mean": [0.498] * 3, "std": [0.502] * 3},
    "crop-bicubic": {"image_size": 64, "resize_size": 72, "resample": "bicubic",
                     "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    "squash-black-background": {"image_size": 48, "resize_mode": "squash", "background": [0, 0, 0],
                                "rescale_factor": 1.0, "mean": [127.5] * 3, "std": [127.5] * 3},
}


@pytest.mark.parametrize("config_name", sorted(CONFIGS))
def test_served_preprocessing_matches_image_preprocessor(images, config_name):
    config = ImagePreprocessConfig.from_dict(CONFIGS[config_name])
    reference = ImagePreprocessor(config)
    settings = served.Preprocessing(config.to_dict())
    modes = set()
    for name, data in images.items():
        expected = reference(data, name).numpy()
        got = served.preprocess(data, settings)
        assert got.dtype == np.float32 and got.shape == (3, config.image_size, config.image_size), name
        diff = float(np.max(np.abs(got - expected)))
        assert diff < TOLERANCE, f"{name}: max |diff| {diff}"
        modes.add(Image.open(io.BytesIO(data)).mode)
    assert {"L", "RGB", "RGBA", "LA", "P", "CMYK", "1"} <= modes
    assert any(m.startswith("I") for m in modes)


def test_exif_orientation_is_applied(images):
    settings = served.Preprocessing({"image_size": 16, "resize_mode": "squash"})
    image = served.decode(images["china-exif-rotated.jpg"], settings)
    assert image.size == (200, 300)  # stored 300x200, displayed rotated


def test_base64_and_data_url_are_accepted(images):
    settings = served.Preprocessing(CONFIGS["digits-export"])
    raw = images["digit-0"]
    expected = served.preprocess(raw, settings)
    text = base64.b64encode(raw)
    np.testing.assert_array_equal(served.preprocess(text, settings), expected)
    np.testing.assert_array_equal(served.preprocess(b"data:image/png;base64," + text, settings), expected)


@pytest.mark.parametrize(("data", "message"), [
    (b"", r"empty image \(0 bytes\)"),
    (b"this is not an image, just some words", r"cannot decode image \(not a recognised image format, 37 bytes\)"),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, r"cannot decode image"),
])
def test_bad_bytes_raise_one_line_errors(data, message):
    settings = served.Preprocessing(CONFIGS["digits-export"])
    with pytest.raises(served.ImageInputError, match=message) as info:
        served.preprocess(data, settings)
    assert "\n" not in str(info.value) and "0x" not in str(info.value)


def test_truncated_png_is_an_error(images):
    settings = served.Preprocessing(CONFIGS["digits-export"])
    with pytest.raises(served.ImageInputError, match="cannot decode image"):
        served.preprocess(images["logo2.png"][:400], settings)


def test_pixel_limit(images):
    settings = served.Preprocessing(CONFIGS["digits-export"], max_pixels=1000)
    with pytest.raises(served.ImageInputError, match=r"640x427 pixels, more than the limit of 1000"):
        served.preprocess(images["china.jpg"], settings)


def test_model_file_imports_only_the_serving_venv_packages():
    source = (repository._MODELS_PKG / "image_preprocess_model.py").read_text()
    imports = {line.split()[1].split(".")[0] for line in source.splitlines()
               if line.startswith(("import ", "from ")) or line.startswith("    import ")}
    assert imports <= {"base64", "binascii", "io", "json", "os", "numpy", "PIL", "triton_python_backend_utils"}
