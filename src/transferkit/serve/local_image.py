"""Local serving of image classifiers with drift monitoring: one python-backend model in place of the ensemble.

The entry model ``NAME`` of an image deployment is an ensemble (preprocess -> graph -> postprocess) in
``config.pbtxt``, the production config, and stays so. When the deployment samples traffic to a monitor
(``monitor_sample_rate`` > 0), this module writes ``NAME/configs/local.pbtxt``: a python-backend model with the
ensemble's inputs and outputs (``triton_models/image_model.py``) that decodes the images with the same
preprocessing code, runs the served graph with the classification head's input as an extra output
(``model.monitor.onnx``, see :mod:`transferkit.monitor.graph`), classifies, reports Triton custom metrics and
samples embeddings, predictions and image features (width, height, brightness) to the monitor. The image
task calls it (:meth:`transferkit.tasks.image_classification.ImageClassification.write_serving_monitor`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from transferkit.serve import repository as repo
from transferkit.serve import triton_config as tc

STEP_MODULES = ("image_preprocess_model.py", "onnx_model.py", "postprocess_model.py", "monitor_client.py")
MONITOR_GRAPH = "model.monitor.onnx"


def image_entry_local_config(name: str, exported: repo.ExportedModel, options: repo.RepositoryOptions) -> Any:
    """``NAME/configs/local.pbtxt``: encoded images in; logits, probabilities and label out, in one python model."""
    config = tc._pb().ModelConfig(name=name, backend="python")
    tc._set_common(config, options, kind="cpu", count=options.local_instance_count)
    tc._add_tensor(config.input, tc.IMAGE_INPUT, "string", [1])
    logits = exported.logits
    dims = tc._logit_dims(exported)
    tc._add_tensor(config.output, logits.name, logits.dtype, dims, label_filename=tc.LABELS_FILE)
    tc._add_tensor(config.output, tc.PROBABILITIES_OUTPUT, "float32", dims)
    tc._add_tensor(config.output, tc.LABEL_OUTPUT, "string", [1])
    tc._param(config, "graph_input", exported.spec.inputs[0].name)
    tc._param(config, "preprocessor_file", tc.PREPROCESSOR_FILE)
    tc._param(config, "monitor_model_file", MONITOR_GRAPH)
    tc._param(config, "intra_op_threads", str(options.local_threads))
    tc._param(config, "serving_metrics", "1" if options.serving_metrics else "0")
    tc._param(config, "monitor_url", options.monitor_url.rstrip("/"))
    tc._param(config, "monitor_sample_rate", repr(float(options.monitor_sample_rate)))
    return config


def write_image_entry_local(exported: repo.ExportedModel, name: str, root: Path, version: int,
                            options: repo.RepositoryOptions) -> None:
    """Add the local config, the model code, the preprocessing and the monitor graph to the entry model's folder."""
    from transferkit.monitor.graph import with_embedding_output

    assert exported.image_preprocessing is not None
    entry = root / name
    repo._write(entry / "configs" / f"{repo.LOCAL_CONFIG_NAME}.pbtxt",
                repo.to_pbtxt(image_entry_local_config(name, exported, options)))
    folder = entry / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo._MODELS_PKG / "image_model.py", folder / "model.py")
    for module in STEP_MODULES:
        shutil.copy2(repo._MODELS_PKG / module, folder / module)
    repo._write(folder / tc.PREPROCESSOR_FILE, json.dumps(exported.image_preprocessing, indent=2) + "\n")
    graph, _ = with_embedding_output(exported.onnx_path)
    (folder / MONITOR_GRAPH).write_bytes(graph)
