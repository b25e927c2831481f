"""Triton python-backend model: logits in, probabilities, label names and the logits out.

Copied into ``<name>_postprocess/<version>/model.py``; the label names come from ``labels.txt`` in the
model folder (one per line, index = class id), the same file the classification extension uses.
"""

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Softmax and arg-max over the class axis."""

    def initialize(self, args):
        """Read the label file and the tensor names from the config."""
        config = json.loads(args["model_config"])
        with open(os.path.join(args["model_repository"], "labels.txt"), encoding="utf-8") as handle:
            self.labels = np.array([line.rstrip("\n").encode("utf-8") for line in handle if line.strip()], dtype=object)
        self.logits_name = config["input"][0]["name"]
        names = [o["name"] for o in config["output"]]
        self.probabilities_name, self.label_name, self.passthrough_name = names[0], names[1], names[2]

    def execute(self, requests):
        """Compute a numerically stable softmax and the best label per row."""
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, self.logits_name).as_numpy().astype(np.float32)
            shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probabilities = shifted / shifted.sum(axis=-1, keepdims=True)
            labels = self.labels[probabilities.argmax(axis=-1)].reshape(-1, 1)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(self.probabilities_name, probabilities.astype(np.float32)),
                pb_utils.Tensor(self.label_name, labels),
                pb_utils.Tensor(self.passthrough_name, logits),
            ]))
        return responses
