"""Image-classification data prep on real images: built-ins, class folders, tables of paths or bytes, CLI."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from transferkit.cli.main import app
from transferkit.data.builtin import load_builtin
from transferkit.data.prepare import DataPrepConfig, DataPrepResult, prepare_dataset
from transferkit.data.prepared import SPLITS, load_prepared
from transferkit.errors import AssetError, ConfigError, DataError, PreparedDataError, SchemaError
from transferkit.tasks import get_task

runner = CliRunner()
IMAGE = "image-classification"


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    """The scikit-learn digits as uint8 8x8 images and integer targets."""
    from sklearn.datasets import load_digits

    data = load_digits()
    return np.rint(data.images * (255.0 / 16.0)).astype(np.uint8), data.target


@pytest.fixture(scope="module")
def prepared_digits(tmp_path_factory: pytest.TempPathFactory) -> tuple[DataPrepResult, Path]:
    out = tmp_path_factory.mktemp("digits") / "out"
    return prepare_dataset(DataPrepConfig(dataset="builtin:digits", out=out, task=IMAGE)), out


def _png(array: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _folder(root: Path, digits: tuple[np.ndarray, np.ndarray], classes: tuple[int, ...] = (0, 1, 2),
            per_class: int = 10) -> Path:
    """ROOT/<digit>/ with PNG and JPEG files (alternating) of real digit images."""
    images, targets = digits
    for digit in classes:
        folder = root / f"digit-{digit}"
        folder.mkdir(parents=True)
        for n, index in enumerate(np.flatnonzero(targets == digit)[:per_class]):
            fmt, suffix = ("PNG", "png") if n % 2 == 0 else ("JPEG", "jpg")
            (folder / f"{n:03d}.{suffix}").write_bytes(_png(images[index], fmt=fmt))
    return root


def test_builtin_digits_end_to_end(prepared_digits: tuple[DataPrepResult, Path]) -> None:
    result, out = prepared_digits
    assert result.task == IMAGE
    assert result.source_rows == 1797 and sum(result.rows.values()) == 1797
    assert result.rows == {"train": 1437, "validation": 180, "test": 180}
    assert json.loads((out / "labels.json").read_text()) == [str(d) for d in range(10)]
    schema = json.loads((out / "schema.json").read_text())
    assert schema["task"] == IMAGE and schema["image_format"] == "PNG"
    prepared = load_prepared(out)
    assert prepared.task == IMAGE and get_task(prepared).modality == "image"
    train = prepared.table("train")
    assert set(train.column_names) == {"image", "label", "label_name", "width", "height", "mode"}
    assert train.schema.field("image").type == pa.binary() and train.schema.field("label").type == pa.int64()
    assert [prepared.labels[i] for i in prepared.label_ids("train")] == prepared.label_names("train")
    for png in prepared.images("test")[:20]:
        with Image.open(io.BytesIO(png)) as image:
            assert (image.format, image.size, image.mode) == ("PNG", (8, 8), "L")
    assert set(train.column("mode").to_pylist()) == {"L"}
    # Stratified: every class is in every split, in proportion.
    stats = json.loads((out / "stats.json").read_text())
    for split in ("validation", "test"):
        assert all(16 <= stats["class_balance"][split][str(d)] <= 20 for d in range(10))
    assert stats["modes"] == {"L": 1797} and stats["image_size"]["width"]["max"] == 8
    sheets = sorted((out / "contact_sheets").glob("*.png"))
    assert len(sheets) == 10 and stats["contact_sheets"] == [f"contact_sheets/{p.name}" for p in sheets]
    with Image.open(sheets[0]) as sheet:
        assert sheet.size == (4 * 66 + 2, 4 * 66 + 2)  # 16 thumbnails in a 4x4 grid of 64 px cells
    html = result.report_html.read_text()
    assert html.count("data:image/png;base64,") == 12  # class balance, sizes, 10 contact sheets
    assert "Contact sheets" in html and "Modes and formats" in html
    assert result.metrics["image_width_p50"] == 8.0 and result.metrics["num_labels"] == 10.0
    with pytest.raises(PreparedDataError, match="no 'text' column in this image-classification dataset"):
        prepared.texts("train")
    json.dumps(result.to_dict())


def test_same_seed_gives_identical_splits(prepared_digits: tuple[DataPrepResult, Path], tmp_path: Path) -> None:
    _, first = prepared_digits
    again = tmp_path / "again"
    prepare_dataset(DataPrepConfig(dataset="builtin:digits", out=again, task=IMAGE))
    for split in SPLITS:
        assert (first / f"{split}.parquet").read_bytes() == (again / f"{split}.parquet").read_bytes()


def test_image_folder_with_png_and_jpeg(digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", digits)
    # Modes other than grey: a palette PNG (-> RGB), grey+alpha (-> L), RGBA (kept), CMYK JPEG (-> RGB).
    image = digits[0][np.flatnonzero(digits[1] == 0)[20]]
    (root / "digit-0" / "palette.png").write_bytes(_png(image, "P"))
    (root / "digit-0" / "alpha.png").write_bytes(_png(image, "LA"))
    (root / "digit-1" / "rgba.png").write_bytes(_png(image, "RGBA"))
    (root / "digit-1" / "cmyk.jpg").write_bytes(_png(image, "CMYK", fmt="JPEG"))
    (root / "digit-2" / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    result = prepare_dataset(DataPrepConfig(dataset=str(root), out=out, task=IMAGE))
    assert result.labels == ["digit-0", "digit-1", "digit-2"] and result.source_rows == 34
    stats = json.loads((out / "stats.json").read_text())
    assert stats["source_formats"] == {"PNG": 18, "JPEG": 16}
    assert stats["modes"] == {"L": 31, "RGB": 2, "RGBA": 1}
    assert stats["converted_modes"] == {"CMYK->RGB": 1, "LA->L": 1, "P->RGB": 1}
    assert any(w.startswith("mixed image modes: L (31), RGB (2), RGBA (1)") for w in result.warnings)
    prepared = load_prepared(out)
    modes = {m for s in SPLITS for m in prepared.table(s).column("mode").to_pylist()}
    assert modes == {"L", "RGB", "RGBA"}
    assert len(list((out / "contact_sheets").glob("*.png"))) == 3


@pytest.mark.parametrize(("damage", "error", "message"), [
    ("corrupt", DataError, r"imgs/digit-1/bad\.png: not a readable image \(.*\); expected a PNG, JPEG"),
    ("truncated", DataError, r"imgs/digit-1/cut\.jpg: not a readable image"),
    ("tiny", DataError, r"imgs/digit-2/tiny\.png: image is 4x8 px; expected at least 8 px on each side"),
    ("empty-class", DataError, r"imgs/digit-7: empty class folder \(found only: readme\.txt\); expected "),
    ("small-class", DataError, r"imgs/digit-1: class folder holds 9 image\(s\), fewer than min_class_count=10"),
    ("stray", DataError, r"imgs/loose\.png: image outside a class folder"),
    ("single-class", DataError, r"imgs: a single class folder 'digit-0'; expected at least 2 class folders"),
])
def test_bad_image_folders_name_the_file(damage: str, error: type, message: str,
                                         digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", digits, classes=(0,) if damage == "single-class" else (0, 1, 2))
    if damage == "corrupt":
        (root / "digit-1" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    elif damage == "truncated":
        data = _png(np.tile(digits[0][0], (4, 4)), fmt="JPEG")
        (root / "digit-1" / "cut.jpg").write_bytes(data[: len(data) // 2])
    elif damage == "tiny":
        (root / "digit-2" / "tiny.png").write_bytes(_png(digits[0][0][:, :4]))
    elif damage == "empty-class":
        (root / "digit-7").mkdir()
        (root / "digit-7" / "readme.txt").write_text("no images here")
    elif damage == "small-class":
        sorted((root / "digit-1").iterdir())[0].unlink()
    elif damage == "stray":
        (root / "loose.png").write_bytes(_png(digits[0][0]))
    out = tmp_path / "out"
    with pytest.raises(error, match=message) as info:
        prepare_dataset(DataPrepConfig(dataset=str(root), out=out, task=IMAGE))
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_csv_with_relative_paths(digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    images, targets = digits
    (tmp_path / "pics").mkdir()
    paths, labels = [], []
    for index in range(60):
        name = f"pics/{index:03d}.png"
        (tmp_path / name).write_bytes(_png(images[index]))
        paths.append(name)
        labels.append(["zero", "one", "two"][int(targets[index]) % 3])
    table = pa.table({"file": paths, "category": labels})
    pacsv.write_csv(table, tmp_path / "index.csv")
    out = tmp_path / "out"
    result = prepare_dataset(DataPrepConfig(dataset=str(tmp_path / "index.csv"), out=out, task=IMAGE,
                                            image_column="file", label_column="category"))
    assert result.labels == ["one", "two", "zero"] and sum(result.rows.values()) == 60
    schema = json.loads((out / "schema.json").read_text())
    assert (schema["image_column"], schema["label_column"], schema["source_kind"]) == ("file", "category", "table")
    # A missing file names the table row and the path as written.
    table = pa.table({"file": [*paths[:59], "pics/missing.png"], "category": labels})
    pacsv.write_csv(table, tmp_path / "broken.csv")
    with pytest.raises(DataError, match=r"broken\.csv: row 60: image 'pics/missing\.png': image file not found"):
        prepare_dataset(DataPrepConfig(dataset=str(tmp_path / "broken.csv"), out=tmp_path / "o2", task=IMAGE,
                                       image_column="file", label_column="category"))


def test_parquet_with_image_bytes_and_structs(digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    images, targets = digits
    blobs = [_png(images[i]) for i in range(90)]
    ids = [int(targets[i]) % 3 for i in range(90)]
    pq.write_table(pa.table({"image": pa.array(blobs, pa.binary()), "label": ids}), tmp_path / "bytes.parquet")
    result = prepare_dataset(DataPrepConfig(dataset=str(tmp_path / "bytes.parquet"), out=tmp_path / "a",
                                            task=IMAGE))
    assert result.labels == ["0", "1", "2"] and sum(result.rows.values()) == 90
    # The Hugging Face layout: a struct of bytes and path.
    structs = pa.array([{"bytes": b, "path": None} for b in blobs],
                       pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    pq.write_table(pa.table({"img": structs, "label": ids}), tmp_path / "hf.parquet")
    result = prepare_dataset(DataPrepConfig(dataset=str(tmp_path / "hf.parquet"), out=tmp_path / "b", task=IMAGE,
                                            image_column="img"))
    assert sum(result.rows.values()) == 90
    corrupt = [*blobs[:41], b"not an image at all", *blobs[42:]]
    pq.write_table(pa.table({"image": pa.array(corrupt, pa.binary()), "label": ids}), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: row 42: column 'image': not a readable image"):
        prepare_dataset(DataPrepConfig(dataset=str(tmp_path / "bad.parquet"), out=tmp_path / "c", task=IMAGE))
    pq.write_table(pa.table({"image": list(range(90)), "label": ids}), tmp_path / "ints.parquet")
    with pytest.raises(SchemaError, match=r"ints\.parquet: row 1: column 'image' holds int64 values; expected"):
        prepare_dataset(DataPrepConfig(dataset=str(tmp_path / "ints.parquet"), out=tmp_path / "d", task=IMAGE))


def test_cli_prepares_an_image_folder(digits: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", digits)
    out = tmp_path / "out"
    result = runner.invoke(app, ["data", "prepare", "--task", IMAGE, "--dataset", str(root), "--out", str(out),
                                 "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["task"] == IMAGE and payload["num_labels"] == 3 and payload["modes"] == {"L": 30}
    assert load_prepared(out).task == IMAGE
    (root / "digit-2" / "bad.jpg").write_bytes(b"\xff\xd8\xff broken")
    result = runner.invoke(app, ["data", "prepare", "--task", IMAGE, "--dataset", str(root), "--out",
                                 str(tmp_path / "out2"), "--min-image-size", "4"])
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "imgs/digit-2/bad.jpg: not a readable image" in errors[0]
    assert not (tmp_path / "out2").exists()


def test_config_and_builtin_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="text_pair_column: not supported for task image-classification"):
        DataPrepConfig(dataset="builtin:digits", out=tmp_path / "o", task=IMAGE, text_pair_column="b")
    with pytest.raises(ConfigError, match="min_image_size: expected a positive number of pixels, got 0"):
        DataPrepConfig(dataset="builtin:digits", out=tmp_path / "o", task=IMAGE, min_image_size=0)
    with pytest.raises(ConfigError, match="label_column and image_column are both 'x'"):
        DataPrepConfig(dataset="builtin:digits", out=tmp_path / "o", task=IMAGE, image_column="x", label_column="x")
    with pytest.raises(DataError, match=r"builtin:movie-sentiment: a text dataset .* expected an image dataset"):
        prepare_dataset(DataPrepConfig(dataset="builtin:movie-sentiment", out=tmp_path / "o", task=IMAGE))
    with pytest.raises(DataError, match=r"builtin:digits: an image dataset .* expected task image-classification"):
        prepare_dataset(DataPrepConfig(dataset="builtin:digits", out=tmp_path / "o"))


def _idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_fashion_mnist_needs_the_debian_package(digits: tuple[np.ndarray, np.ndarray], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRANSFERKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRANSFERKIT_FASHION_MNIST_DIR", str(tmp_path / "fmnist"))
    with pytest.raises(AssetError, match="needs the Debian package dataset-fashion-mnist"):
        load_builtin("builtin:fashion-mnist")
    # The IDX layout of the Debian package, with a few real 8x8 digits standing in for clothes.
    (tmp_path / "fmnist").mkdir()
    images, targets = digits
    _idx(tmp_path / "fmnist" / "train-images-idx3-ubyte.gz", images[:20])
    _idx(tmp_path / "fmnist" / "train-labels-idx1-ubyte.gz", targets[:20])
    _idx(tmp_path / "fmnist" / "t10k-images-idx3-ubyte.gz", images[20:25])
    _idx(tmp_path / "fmnist" / "t10k-labels-idx1-ubyte.gz", targets[20:25])
    table = load_builtin("builtin:fashion-mnist")
    assert table.num_rows == 25 and table.column("label")[0].as_py() == "T-shirt/top"
    with Image.open(io.BytesIO(table.column("image")[3].as_py())) as image:
        assert image.size == (8, 8) and np.array_equal(np.asarray(image), images[3])


def test_every_supported_format_decodes_and_renders_on_a_contact_sheet(digits: tuple[np.ndarray, np.ndarray]
                                                                       ) -> None:
    from transferkit.data.image_stats import contact_sheet
    from transferkit.data.images import decode_image

    grey = np.kron(digits[0][5], np.ones((4, 4), dtype=np.uint8))  # 32x32
    cases = {
        "BMP": (_png(grey, fmt="BMP"), "L"),
        "GIF": (_png(grey, fmt="GIF"), "RGB"),  # GIF is a palette format
        "WEBP": (_png(grey, "RGB", fmt="WEBP"), "RGB"),
        "PNG": (_png(grey.astype(np.uint16) * 257, fmt="PNG"), "I;16"),  # 16-bit grey is kept
    }
    decoded = []
    for fmt, (data, mode) in cases.items():
        image = decode_image(data, f"x.{fmt.lower()}")
        assert (image.source_format, image.mode, image.width, image.height) == (fmt, mode, 32, 32)
        with Image.open(io.BytesIO(image.png)) as png:
            assert (png.format, png.mode) == ("PNG", mode)
        decoded.append(image.png)
    with Image.open(io.BytesIO(contact_sheet(decoded))) as sheet:
        assert sheet.size == (4 * 66 + 2, 66 + 2)
        assert np.asarray(sheet.convert("L")).max() > 200  # the digits are visible, 16-bit scaled to 8-bit
