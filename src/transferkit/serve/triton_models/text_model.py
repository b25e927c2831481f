"""Triton python-backend model: the whole text classifier in one process (the local fast path).

Copied into ``<name>/<version>/model.py`` (the ensemble's folder) beside copies of
``tokenizer_model.py``, ``onnx_model.py`` and ``postprocess_model.py``, whose code it runs in-process:
raw strings in; logits, probabilities and label out, the ensemble's interface and numbers. Only the
local config (``configs/local.pbtxt``) uses it; production Triton reads ``config.pbtxt``, the ensemble.

Why: the local ensemble passes each request through three python-backend stubs (three shared-memory
round trips plus the ensemble scheduler); this model passes once. The tokenizer and the graph are read
from the sibling models of the same version (``<tokenizer_model>/<version>/tokenizer/tokenizer.json``
and ``<graph_model>/<version>/<model_file>``), so nothing is stored twice: the local server always reads
a repository folder on local disk, where the siblings are next door.
"""

import json
import os
import sys

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Tokenize, run the graph (length-grouped batches) and classify, in one stub."""

    def initialize(self, args):
        """Load the tokenizer, the ONNX Runtime session and the labels of this version."""
        model_dir = args["model_repository"]
        sys.path.insert(0, os.path.join(model_dir, args["model_version"]))
        from onnx_model import GraphRunner
        from postprocess_model import classify, read_labels
        from tokenizer_model import TextEncoder, model_params, read_texts

        self.classify, self.read_texts = classify, read_texts
        config = json.loads(args["model_config"])
        params = model_params(config)
        graph_inputs = [(name, pb_utils.triton_string_to_numpy(dtype))
                        for name, dtype in json.loads(params["graph_inputs"])]
        logits = config["output"][0]
        self.logits = (logits["name"], pb_utils.triton_string_to_numpy(logits["data_type"]))
        self.probabilities_name, self.label_name = config["output"][1]["name"], config["output"][2]["name"]
        self.text_inputs = [i["name"] for i in config["input"]]
        repository, version = os.path.dirname(os.path.normpath(model_dir)), args["model_version"]
        tokenizer_file = os.path.join(repository, params["tokenizer_model"], version, "tokenizer", "tokenizer.json")
        graph_file = os.path.join(repository, params["graph_model"], version, params.get("model_file", "model.onnx"))
        for path in (tokenizer_file, graph_file):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: missing (the local fast path reads the sibling models of the same "
                                        "version from a repository folder on local disk)")
        self.encoder = TextEncoder(tokenizer_file, params, graph_inputs)
        self.runner = GraphRunner(graph_file, params, graph_inputs, [self.logits])
        self.labels = read_labels(os.path.join(model_dir, "labels.txt"))

    def execute(self, requests):
        """One ``encode_batch`` over all requests, length-grouped graph runs, softmax and labels."""
        columns, sizes = self.read_texts(requests, self.text_inputs)
        outputs = self.runner.run(self.encoder.encode(columns, sizes))
        responses = []
        for (logits,) in outputs:
            probabilities, labels = self.classify(logits, self.labels)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(self.logits[0], logits),
                pb_utils.Tensor(self.probabilities_name, probabilities),
                pb_utils.Tensor(self.label_name, labels),
            ]))
        return responses
