"""Triton python-backend model: the whole text classifier in one process (the local fast path).

Copied into ``<name>/<version>/model.py`` (the ensemble's folder) beside the tokenizer files and copies of
``tokenizer_model.py``, ``onnx_model.py`` and ``postprocess_model.py``, whose code it runs in-process:
raw strings in; logits, probabilities and label out, the ensemble's interface and numbers. Only the
local config (``configs/local.pbtxt``) uses it; production Triton reads ``config.pbtxt``, the ensemble.

Why: the local ensemble passes each request through three python-backend stubs (three shared-memory
round trips plus the ensemble scheduler); this model passes once. The graph is read from the sibling
graph model of the same version (``<graph_model>/<version>/<model_file>``) when the repository is a
folder on local disk, so nothing large is stored twice. Where it is not (a cloud repository, which
Triton downloads model by model), the graph runs in the graph model through a BLS call: one more hop,
still one fewer than the ensemble.
"""

import json
import os
import sys
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Tokenize, run the graph (length-grouped batches) and classify, in one stub."""

    def initialize(self, args):
        """Load the tokenizer, the graph (in-process, or the graph model through BLS) and the labels."""
        model_dir, version = args["model_repository"], args["model_version"]
        sys.path.insert(0, os.path.join(model_dir, version))
        from onnx_model import GraphRunner
        from postprocess_model import aggregate, classify, read_labels
        from tokenizer_model import WINDOW_DOC, TextEncoder, model_params, read_texts

        self.classify, self.read_texts, self.aggregate, self.window_doc = classify, read_texts, aggregate, WINDOW_DOC
        config = json.loads(args["model_config"])
        params = model_params(config)
        graph_inputs = [(name, pb_utils.triton_string_to_numpy(dtype))
                        for name, dtype in json.loads(params["graph_inputs"])]
        logits = config["output"][0]
        self.logits = (logits["name"], pb_utils.triton_string_to_numpy(logits["data_type"]))
        self.probabilities_name, self.label_name = config["output"][1]["name"], config["output"][2]["name"]
        self.text_inputs = [i["name"] for i in config["input"]]
        self.graph_model = params["graph_model"]
        self.aggregation = params.get("aggregation", "mean")
        tokenizer_file = os.path.join(model_dir, version, "tokenizer", "tokenizer.json")
        self.encoder = TextEncoder(tokenizer_file, params, graph_inputs)
        graph_file = os.path.join(os.path.dirname(os.path.normpath(model_dir)), self.graph_model, version,
                                  params.get("model_file", "model.onnx"))
        self.in_process = os.path.isfile(graph_file)
        self.labels = read_labels(os.path.join(model_dir, "labels.txt"))
        outputs = [self.logits]
        self.monitor = None
        self._monitoring(config, params)
        if self.monitor is not None and self.in_process:
            graph_file = os.path.join(model_dir, version, params["monitor_model_file"])
            outputs.append(("monitor_embedding", pb_utils.triton_string_to_numpy("TYPE_FP32")))
        elif self.monitor is not None:
            pb_utils.Logger.log_warn("monitoring: the graph runs in another model (BLS); no embeddings sampled")
            self.monitor = None
        self.runner = GraphRunner(graph_file if self.in_process else None, params, graph_inputs, outputs,
                                  execute=None if self.in_process else self._bls)

    def _monitoring(self, config, params):
        """Custom metrics of every request; a record sender when ``monitor_sample_rate`` > 0."""
        from monitor_client import RecordSender, ServingMetrics

        self.model_name = config["name"]
        unk = getattr(self.encoder.tokenizer.model, "unk_token", None)
        self.unk_id = self.encoder.tokenizer.token_to_id(unk) if unk else None
        self.metrics = None
        try:
            if params.get("serving_metrics", "1") == "1":
                self.metrics = ServingMetrics(pb_utils, self.model_name, [b.decode("utf-8") for b in self.labels])
        except Exception as exc:  # custom metrics need Triton's metrics on; serving goes on without them
            pb_utils.Logger.log_warn(f"monitoring: custom metrics unavailable ({exc})")
        rate = float(params.get("monitor_sample_rate", "0") or 0)
        if rate > 0 and params.get("monitor_url"):
            self.monitor = RecordSender(params["monitor_url"], rate, self.metrics, log=pb_utils.Logger.log_warn)

    def _bls(self, output_names, feed):
        """Run one padded group in the graph model (``model_version`` -1 follows a hot swap like the ensemble)."""
        request = pb_utils.InferenceRequest(model_name=self.graph_model, requested_output_names=output_names,
                                            inputs=[pb_utils.Tensor(name, array) for name, array in feed.items()])
        response = request.exec()
        if response.has_error():
            raise pb_utils.TritonModelException(f"{self.graph_model}: {response.error().message()}")
        return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in output_names]

    def execute(self, requests):
        """One ``encode_batch`` over all requests, length-grouped graph runs, softmax and labels."""
        try:
            columns, sizes = self.read_texts(requests, self.text_inputs)
            encoded = self.encoder.encode(columns, sizes)
            # Chunked long documents: rows are windows; window_doc maps them back to the request's texts.
            windows = [arrays.pop(self.window_doc, None) for arrays in encoded]
            outputs = self.runner.run(encoded)
        except Exception as exc:  # every request of the batch gets the error instead of a dead stub
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))) for _ in requests]
        responses = []
        for request, arrays, docs, (logits, *embedding) in zip(requests, encoded, windows, outputs, strict=True):
            if docs is not None:
                logits = self.aggregate(logits, docs, self.aggregation).astype(logits.dtype)
                arrays, embedding = _per_text(arrays, docs), []
            probabilities, labels = self.classify(logits, self.labels)
            try:
                self._observe(request, arrays, probabilities, embedding[0] if embedding else None)
            except Exception as exc:  # monitoring never fails a request
                pb_utils.Logger.log_warn(f"monitoring: {exc}")
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(self.logits[0], logits),
                pb_utils.Tensor(self.probabilities_name, probabilities),
                pb_utils.Tensor(self.label_name, labels),
            ]))
        if self.metrics is not None:
            self.metrics.flush()  # one round trip per counter for the whole batch
        return responses


    def _observe(self, request, arrays, probabilities, embedding):
        """Count the request's items in the custom metrics; queue the sampled ones for the monitor."""
        from monitor_client import request_id_and_group

        ids = arrays["input_ids"]
        mask = arrays.get("attention_mask", ids != self.encoder.pad_id)
        lengths = mask.sum(axis=1)
        unknown = ((ids == self.unk_id) & (mask > 0)).sum(axis=1) if self.unk_id is not None else 0 * lengths
        predictions, confidences = probabilities.argmax(axis=1), probabilities.max(axis=1)
        if self.metrics is not None:
            try:
                self.metrics.observe(predictions, confidences, lengths)
            except Exception as exc:  # sampling below does not depend on the metrics
                pb_utils.Logger.log_warn(f"monitoring metrics: {exc}")
        if self.monitor is None or embedding is None:
            return
        chosen = self.monitor.sample(len(predictions))
        if not chosen:
            return
        request_id, group = request_id_and_group(request)
        request_id = request_id or f"{self.model_name}-{id(request)}-{time.time_ns()}"
        self.monitor.offer([{
            "request_id": request_id if len(predictions) == 1 else f"{request_id}-{i}",
            "embedding": embedding[i].astype(float).tolist(), "prediction": int(predictions[i]),
            "confidence": float(confidences[i]),
            "features": {"length": float(lengths[i]), "unk_rate": float(unknown[i]) / max(1.0, float(lengths[i]))},
            **({"group": group} if group is not None else {}),
        } for i in chosen])


def _per_text(arrays, docs):
    """Token counts per text (not per window) for the custom metrics: one row per text, length = its tokens.

    The ids are not kept (-1: no unknown-token count); chunked texts send no embedding samples to the monitor.
    """
    import numpy as np

    ids = arrays["input_ids"]
    mask = arrays.get("attention_mask", np.ones_like(ids))
    per_doc = np.bincount(docs.reshape(-1), weights=mask.sum(axis=1))
    width = int(per_doc.max()) if len(per_doc) else 1
    out = np.zeros((len(per_doc), width), dtype=ids.dtype)
    for row, length in enumerate(per_doc.astype(int)):
        out[row, :length] = 1
    return {"input_ids": np.full(out.shape, -1, dtype=ids.dtype), "attention_mask": out}
