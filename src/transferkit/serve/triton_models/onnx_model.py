"""Triton python-backend model: run ``model.onnx`` with ONNX Runtime on CPU (the local variant).

Copied into ``<name>_onnx/<version>/model.py`` by transferkit. Production uses the ``onnxruntime_onnx``
platform on the same file; this variant exists because the local Triton has only the python backend.

Requests are batched by Triton's dynamic batcher with ``allow_ragged_batch``: each request keeps its own
sequence length, and ``execute`` pads them to the longest one, runs one ONNX Runtime call, and splits the
outputs again. Padding uses the value from the ``pad_values`` parameter (0 for ids and masks).
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """ONNX Runtime session over the version's ``model.onnx``."""

    def initialize(self, args):
        """Create the session with the thread budget from the config parameters."""
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("model_file", "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        self.session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        self.inputs = [(i["name"], pb_utils.triton_string_to_numpy(i["data_type"])) for i in config["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]
        self.pad_values = json.loads(params.get("pad_values", "{}"))

    def execute(self, requests):
        """Pad the ragged requests into one batch, run once, split the outputs per request."""
        per_request = []
        for request in requests:
            per_request.append({
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy().astype(dtype, copy=False)
                for name, dtype in self.inputs
            })
        sizes = [next(iter(arrays.values())).shape[0] for arrays in per_request]
        feed = {}
        for name, dtype in self.inputs:
            parts = [arrays[name] for arrays in per_request]
            if parts[0].ndim == 2:
                width = max(p.shape[1] for p in parts)
                pad = self.pad_values.get(name, 0)
                parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=pad) for p in parts]
            feed[name] = np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=dtype)
        results = self.session.run([name for name, _ in self.outputs], feed)
        responses = []
        start = 0
        for size in sizes:
            tensors = [
                pb_utils.Tensor(name, np.ascontiguousarray(result[start : start + size], dtype=dtype))
                for (name, dtype), result in zip(self.outputs, results, strict=True)
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += size
        return responses
