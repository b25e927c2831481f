"""The local fast path of text classifiers: one python-backend model in place of the ensemble.

The entry model ``NAME`` of a text deployment is an ensemble (tokenizer -> graph -> postprocess) in
``config.pbtxt``, the production config. Locally every step is a python-backend model, so a request
crosses three stub processes; measured with Triton's own statistics (``benchmarks/serving.py``), the
tokenizer and postprocess hops cost ~2 ms per request of which ~0.3 ms is their actual work. This module
writes ``NAME/configs/local.pbtxt``: a python-backend model with the ensemble's inputs and outputs that
tokenizes, runs the graph and classifies in one stub (``triton_models/text_model.py``): with the graph
file of its sibling ``NAME_onnx`` of the same version when the repository is on local disk, else through
a BLS call to ``NAME_onnx``. The tokenizer files (~1 MB) are copied beside it. Production is unchanged;
the composing models stay loaded locally too (they back the BLS mode, and callers may use ``NAME_onnx``
directly).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from transferkit.serve import repository as repo
from transferkit.serve import triton_config as tc

STEP_MODULES = ("tokenizer_model.py", "onnx_model.py", "postprocess_model.py", "monitor_client.py")
# The served graph with the classification head's input as an extra output (transferkit.monitor.graph).
MONITOR_GRAPH = "model.monitor.onnx"


def text_entry_local_config(name: str, exported: repo.ExportedModel, options: repo.RepositoryOptions,
                            pad_id: int) -> Any:
    """``NAME/configs/local.pbtxt``: raw strings in; logits, probabilities and label out, in one python model."""
    config = tc._pb().ModelConfig(name=name, backend="python")
    tc._set_common(config, options, kind="cpu", count=options.local_instance_count)
    for text_input in exported.text_inputs:
        tc._add_tensor(config.input, text_input, "string", [1])
    logits = exported.logits
    dims = tc._logit_dims(exported)
    tc._add_tensor(config.output, logits.name, logits.dtype, dims, label_filename=tc.LABELS_FILE)
    tc._add_tensor(config.output, tc.PROBABILITIES_OUTPUT, "float32", dims)
    tc._add_tensor(config.output, tc.LABEL_OUTPUT, "string", [1])
    tc._param(config, "graph_model", f"{name}_onnx")
    tc._param(config, "model_file", "model.onnx")
    tc._param(config, "graph_inputs", json.dumps([[t.name, tc.TRITON_DTYPES[t.dtype]] for t in exported.spec.inputs]))
    tc._param(config, "intra_op_threads", str(options.local_threads))
    tc._param(config, "pad_values", json.dumps({t.name: 0 for t in exported.spec.inputs}))
    tc.text_input_params(config, exported, options)
    tc._param(config, "pad_to_multiple_of", str(options.pad_to_multiple_of))
    tc._param(config, "pad_id", str(pad_id))
    tc._param(config, "serving_metrics", "1" if options.serving_metrics else "0")
    if options.monitor_sample_rate > 0:
        tc._param(config, "monitor_url", options.monitor_url.rstrip("/"))
        tc._param(config, "monitor_sample_rate", repr(float(options.monitor_sample_rate)))
        tc._param(config, "monitor_model_file", MONITOR_GRAPH)
    return config


def write_text_entry_local(exported: repo.ExportedModel, name: str, root: Path, version: int,
                           options: repo.RepositoryOptions, pad_id: int) -> None:
    """Add the local config and the model code of the fast path to the entry model's folder."""
    entry = root / name
    config = repo.to_pbtxt(text_entry_local_config(name, exported, options, pad_id))
    repo._write(entry / "configs" / f"{repo.LOCAL_CONFIG_NAME}.pbtxt", config)
    folder = entry / str(version)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(repo._MODELS_PKG / "text_model.py", folder / "model.py")
    assert exported.tokenizer_dir is not None
    shutil.copytree(exported.tokenizer_dir, folder / "tokenizer", dirs_exist_ok=True)
    for module in STEP_MODULES:
        shutil.copy2(repo._MODELS_PKG / module, folder / module)
    if options.monitor_sample_rate > 0:
        from transferkit.monitor.graph import with_embedding_output

        graph, _ = with_embedding_output(exported.onnx_path)
        (folder / MONITOR_GRAPH).write_bytes(graph)
