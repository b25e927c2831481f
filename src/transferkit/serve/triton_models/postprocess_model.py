"""Triton python-backend model: logits in, probabilities, label names and the logits out.

Copied into ``<name>_postprocess/<version>/model.py``; the label names come from ``labels.txt`` in the
model folder (one per line, index = class id), the same file the classification extension uses. The
local text fast path (``text_model.py``) uses :func:`read_labels` and :func:`classify` in its own process.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def read_labels(path):
    """Label names of ``labels.txt`` as a numpy object array of UTF-8 bytes (index = class id)."""
    with open(path, encoding="utf-8") as handle:
        return np.array([line.rstrip("\n").encode("utf-8") for line in handle if line.strip()], dtype=object)


def aggregate(logits, window_doc, how):
    """Per-text logits of one request from its windows' logits (``window_doc``: text index of each row)."""
    docs = window_doc.reshape(-1).astype(np.int64)
    count = int(docs.max()) + 1 if len(docs) else 0
    logits = logits.astype(np.float64)
    if how == "max":
        out = np.full((count, logits.shape[1]), -np.inf)
        np.maximum.at(out, docs, logits)
    else:
        out = np.zeros((count, logits.shape[1]))
        np.add.at(out, docs, logits)
        out /= np.maximum(np.bincount(docs, minlength=count), 1)[:, None]
    return out.astype(np.float32)


def classify(logits, labels):
    """Numerically stable softmax over the class axis and the best label per row (``[rows, 1]``)."""
    logits = logits.astype(np.float32, copy=False)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
    return probabilities.astype(np.float32, copy=False), labels[probabilities.argmax(axis=-1)].reshape(-1, 1)


class TritonPythonModel:
    """Softmax and arg-max over the class axis."""

    def initialize(self, args):
        """Read the label file and the tensor names from the config."""
        config = json.loads(args["model_config"])
        self.labels = read_labels(os.path.join(args["model_repository"], "labels.txt"))
        self.logits_name = config["input"][0]["name"]
        # Chunked long documents: the windows' logits come with the text index of each window (window_doc).
        self.window_doc = config["input"][1]["name"] if len(config["input"]) > 1 else None
        names = [o["name"] for o in config["output"]]
        self.probabilities_name, self.label_name, self.passthrough_name = names[0], names[1], names[2]
        self.metrics = None
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.aggregation = params.get("aggregation", "mean")
        if params.get("serving_metrics", "1") == "1":
            # Custom metrics of the ensemble (production): predictions and confidences; the entry model's name.
            folder = os.path.join(args["model_repository"], args["model_version"])
            try:
                import sys

                sys.path.insert(0, folder)
                from monitor_client import ServingMetrics

                self.metrics = ServingMetrics(pb_utils, params.get("entry_model", config["name"]),
                                              [b.decode("utf-8") for b in self.labels])
            except Exception as exc:  # serving goes on without custom metrics
                pb_utils.Logger.log_warn(f"monitoring: custom metrics unavailable ({exc})")

    def execute(self, requests):
        """Compute a numerically stable softmax and the best label per row."""
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, self.logits_name).as_numpy().astype(np.float32)
            if self.window_doc is not None:
                docs = pb_utils.get_input_tensor_by_name(request, self.window_doc).as_numpy()
                logits = aggregate(logits, docs, self.aggregation)
            probabilities, labels = classify(logits, self.labels)
            if self.metrics is not None:
                try:
                    self.metrics.observe(probabilities.argmax(axis=-1), probabilities.max(axis=-1), np.zeros(0))
                except Exception as exc:  # monitoring never fails a request
                    pb_utils.Logger.log_warn(f"monitoring metrics: {exc}")
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(self.probabilities_name, probabilities),
                pb_utils.Tensor(self.label_name, labels),
                pb_utils.Tensor(self.passthrough_name, logits),
            ]))
        if self.metrics is not None:
            self.metrics.flush()  # one round trip per counter for the whole batch
        return responses

