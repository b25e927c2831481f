"""The export step writes the monitoring baseline of an image classifier (EfficientNet-Lite0, real digits)."""

import json

import numpy as np

from tests.unit.serve.image_export import shared_image_export
from transferkit.data.prepared import load_prepared
from transferkit.monitor import load_baseline
from transferkit.monitor.baseline import ServedGraph


def test_export_writes_image_baseline_with_size_and_brightness():
    export = shared_image_export()
    baseline = load_baseline(export.export_dir)
    summary = json.loads((export.export_dir / "monitor_baseline" / "baseline.json").read_text())
    assert baseline.meta["task"] == "image-classification"
    assert set(baseline.features) == {"width", "height", "brightness"}
    assert baseline.embeddings.shape[1] == 1280  # EfficientNet-Lite0's pooled features, the head's input
    assert summary["size"] == len(load_prepared(export.data_dir).images("validation")) or summary["size"] == 500
    assert np.all(baseline.features["width"] == 8) and 0 < baseline.features["brightness"].mean() < 1
    # Inverted digits (white background) are far brighter: the served preprocessing reports it per image.
    from io import BytesIO

    from PIL import Image, ImageOps

    items = load_prepared(export.data_dir).images("test")[:16]
    inverted = []
    for data in items:
        buffer = BytesIO()
        ImageOps.invert(Image.open(BytesIO(data)).convert("L")).save(buffer, format="PNG")
        inverted.append(buffer.getvalue())
    graph = ServedGraph(export.export_dir)
    assert graph.run(inverted)["brightness"].mean() > graph.run(items)["brightness"].mean() + 0.3
