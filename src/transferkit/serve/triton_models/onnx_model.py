"""Triton python-backend model: run ``model.onnx`` with ONNX Runtime on CPU (the local variant).

Copied into ``<name>_onnx/<version>/model.py`` by transferkit. Production uses the ``onnxruntime_onnx``
platform on the same file; this variant exists because the local Triton has only the python backend.

Requests are batched by Triton's dynamic batcher with ``allow_ragged_batch``: each request keeps its own
sequence length. :class:`GraphRunner` sorts them by length, cuts groups whose longest sequence is at most
``length_group_ratio`` x the shortest (+8 tokens), pads each group once (``pad_values``, 0 for ids and
masks), runs one ONNX Runtime call per group and splits the outputs again: padding a 10-token sentence
to 60 tokens would cost more than a second call. The local text fast path (``text_model.py``) runs the
same class in its own process.
"""

import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class GraphRunner:
    """A graph fed with ragged per-request arrays: length groups, one padded call per group.

    Args:
        path: The ``.onnx`` file to run with ONNX Runtime; None when ``execute`` runs the graph.
        params: Model parameters (``intra_op_threads``, ``pad_values``, ``length_group_ratio``).
        inputs: ``(name, numpy dtype)`` of the graph inputs to feed.
        outputs: ``(name, numpy dtype)`` of the graph outputs to return, in this order.
        execute: ``execute(output_names, feed) -> arrays`` running the graph elsewhere (a BLS call).
    """

    def __init__(self, path, params, inputs, outputs, execute=None):
        if execute is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = int(params.get("intra_op_threads", "1"))
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
            execute = session.run
        self.execute = execute
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.pad_values = json.loads(params.get("pad_values", "{}"))
        self.group_ratio = float(params.get("length_group_ratio", "1.5"))

    def run(self, per_request):
        """Outputs (a list of arrays, in ``outputs`` order) for each ``{input name: array}`` of ``per_request``."""
        results = [None] * len(per_request)
        for group in self._groups(per_request):
            outputs = self._run([per_request[i] for i in group])
            for index, arrays in zip(group, outputs, strict=True):
                results[index] = arrays
        return results

    def _groups(self, per_request):
        """Split request indices into groups of similar sequence length (bounded padding waste)."""
        first = self.inputs[0][0]
        lengths = [arrays[first].shape[1] if arrays[first].ndim == 2 else 1 for arrays in per_request]
        order = sorted(range(len(per_request)), key=lambda i: lengths[i])
        groups, current = [], []
        for index in order:
            if current and lengths[index] > self.group_ratio * lengths[current[0]] + 8:
                groups.append(current)
                current = []
            current.append(index)
        if current:
            groups.append(current)
        return groups

    def _run(self, group):
        """One ONNX Runtime call over requests padded to the group's longest sequence."""
        sizes = [next(iter(arrays.values())).shape[0] for arrays in group]
        feed = {}
        for name, dtype in self.inputs:
            parts = [arrays[name] for arrays in group]
            if parts[0].ndim == 2:
                width = max(p.shape[1] for p in parts)
                pad = self.pad_values.get(name, 0)
                parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=pad) for p in parts]
            feed[name] = np.ascontiguousarray(np.concatenate(parts, axis=0), dtype=dtype)
        results = self.execute([name for name, _ in self.outputs], feed)
        split, start = [], 0
        for size in sizes:
            split.append([np.ascontiguousarray(r[start : start + size], dtype=dtype)
                          for r, (_, dtype) in zip(results, self.outputs, strict=True)])
            start += size
        return split


class TritonPythonModel:
    """ONNX Runtime session over the version's ``model.onnx``."""

    def initialize(self, args):
        """Create the session with the thread budget from the config parameters."""
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = os.path.join(args["model_repository"], args["model_version"], params.get("model_file", "model.onnx"))
        self.inputs = [(i["name"], pb_utils.triton_string_to_numpy(i["data_type"])) for i in config["input"]]
        self.outputs = [(o["name"], pb_utils.triton_string_to_numpy(o["data_type"])) for o in config["output"]]
        self.runner = GraphRunner(path, params, self.inputs, self.outputs)

    def execute(self, requests):
        """Group the ragged requests by length, pad each group once, run it, split the outputs."""
        per_request = []
        for request in requests:
            per_request.append({
                name: pb_utils.get_input_tensor_by_name(request, name).as_numpy().astype(dtype, copy=False)
                for name, dtype in self.inputs
            })
        responses = []
        for arrays in self.runner.run(per_request):
            tensors = [pb_utils.Tensor(name, array) for (name, _), array in zip(self.outputs, arrays, strict=True)]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
