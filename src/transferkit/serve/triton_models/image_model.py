"""Triton python-backend model: an image classifier in one process, with drift monitoring (local serving).

Copied into ``<name>/<version>/model.py`` (the ensemble's folder) beside copies of
``image_preprocess_model.py``, ``onnx_model.py``, ``postprocess_model.py`` and ``monitor_client.py``, the
export's ``preprocessor.json`` and the served graph with the classification head's input as an extra output
(``model.monitor.onnx``). Only the local config (``configs/local.pbtxt``, written when monitoring is on) uses
it; production Triton reads ``config.pbtxt``, the ensemble. Encoded images in; logits, probabilities and label
out, the ensemble's interface and numbers (the same preprocessing code, graph and softmax).

Besides answering, it counts every request in Triton custom metrics and sends a sampled fraction of items
(pooled embedding, prediction, confidence, and the input features the baseline holds for images: width,
height, brightness of the decoded image) to the monitor, as the text fast path does (``text_model.py``).
A bad image fails only its own request.
"""

import json
import os
import sys
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """Decode, run the graph once per batch of requests, classify, count and sample."""

    def initialize(self, args):
        """Load the preprocessing settings, the monitor graph, the labels and the monitoring helpers."""
        model_dir, version = args["model_repository"], args["model_version"]
        folder = os.path.join(model_dir, version)
        sys.path.insert(0, folder)
        import image_preprocess_model as pre
        from monitor_client import RecordSender, ServingMetrics
        from onnx_model import GraphRunner
        from postprocess_model import classify, read_labels

        self.pre, self.classify = pre, classify
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        with open(os.path.join(folder, params.get("preprocessor_file", "preprocessor.json")),
                  encoding="utf-8") as handle:
            self.settings = pre.Preprocessing(json.load(handle), int(params.get("max_image_pixels",
                                                                                 pre.DEFAULT_MAX_PIXELS)))
        self.input_name = config["input"][0]["name"]
        logits = config["output"][0]
        self.logits = (logits["name"], pb_utils.triton_string_to_numpy(logits["data_type"]))
        self.probabilities_name, self.label_name = config["output"][1]["name"], config["output"][2]["name"]
        self.graph_input = params["graph_input"]
        self.labels = read_labels(os.path.join(model_dir, "labels.txt"))
        outputs = [self.logits, ("monitor_embedding", np.float32)]
        self.runner = GraphRunner(os.path.join(folder, params["monitor_model_file"]), params,
                                  [(self.graph_input, np.float32)], outputs)
        self.model_name = config["name"]
        self.metrics = None
        try:
            if params.get("serving_metrics", "1") == "1":
                self.metrics = ServingMetrics(pb_utils, self.model_name, [b.decode("utf-8") for b in self.labels])
        except Exception as exc:  # custom metrics need Triton's metrics on; serving goes on without them
            pb_utils.Logger.log_warn(f"monitoring: custom metrics unavailable ({exc})")
        rate = float(params.get("monitor_sample_rate", "0") or 0)
        self.monitor = None
        if rate > 0 and params.get("monitor_url"):
            self.monitor = RecordSender(params["monitor_url"], rate, self.metrics, log=pb_utils.Logger.log_warn)

    @staticmethod
    def _error(message):
        code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
        return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)

    def _decode(self, request):
        """``(pixel_values [n, 3, S, S], features)`` of a request's images; ImageInputError names a bad item."""
        items = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy().reshape(-1)
        pixels, features = [], {"width": [], "height": [], "brightness": []}
        for index, item in enumerate(items):
            try:
                image = self.pre.decode(item, self.settings)
            except self.pre.ImageInputError as exc:
                where = f"{self.input_name}[{index}]" if len(items) > 1 else self.input_name
                raise self.pre.ImageInputError(f"input '{where}': {exc}") from None
            features["width"].append(float(image.size[0]))
            features["height"].append(float(image.size[1]))
            features["brightness"].append(float(np.asarray(image.convert("L"), dtype=np.float32).mean()) / 255)
            pixels.append(self.pre.normalise(image, self.settings))
        size = self.settings.image_size
        batch = np.stack(pixels) if pixels else np.zeros((0, 3, size, size), dtype=np.float32)
        return batch.astype(np.float32, copy=False), features

    def execute(self, requests):
        """One graph run over the decodable requests; a bad image fails only its own request."""
        decoded, errors = [], {}
        for index, request in enumerate(requests):
            try:
                decoded.append(self._decode(request))
            except self.pre.ImageInputError as exc:
                errors[index] = str(exc)
                decoded.append(None)
        good = [i for i, item in enumerate(decoded) if item is not None]
        try:
            outputs = self.runner.run([{self.graph_input: decoded[i][0]} for i in good]) if good else []
        except Exception as exc:  # every request of the batch gets the error instead of a dead stub
            return [pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))) for _ in requests]
        results = dict(zip(good, outputs, strict=True))
        responses = []
        for index, request in enumerate(requests):
            if index in errors:
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=self._error(errors[index])))
                continue
            logits, embedding = results[index]
            probabilities, labels = self.classify(logits, self.labels)
            try:
                self._observe(request, decoded[index][1], probabilities, embedding)
            except Exception as exc:  # monitoring never fails a request
                pb_utils.Logger.log_warn(f"monitoring: {exc}")
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(self.logits[0], logits.astype(self.logits[1], copy=False)),
                pb_utils.Tensor(self.probabilities_name, probabilities),
                pb_utils.Tensor(self.label_name, labels),
            ]))
        if self.metrics is not None:
            self.metrics.flush()  # one round trip per counter for the whole batch
        return responses


    def _observe(self, request, features, probabilities, embedding):
        """Count the request's items in the custom metrics; queue the sampled ones for the monitor."""
        from monitor_client import request_id_and_group

        predictions, confidences = probabilities.argmax(axis=1), probabilities.max(axis=1)
        if self.metrics is not None:
            try:
                self.metrics.observe(predictions, confidences, np.zeros(0))
            except Exception as exc:  # sampling below does not depend on the metrics
                pb_utils.Logger.log_warn(f"monitoring metrics: {exc}")
        if self.monitor is None:
            return
        chosen = self.monitor.sample(len(predictions))
        if not chosen:
            return
        request_id, group = request_id_and_group(request)
        request_id = request_id or f"{self.model_name}-{id(request)}-{time.time_ns()}"
        self.monitor.offer([{
            "request_id": request_id if len(predictions) == 1 else f"{request_id}-{i}",
            "embedding": embedding[i].reshape(-1).astype(float).tolist(), "prediction": int(predictions[i]),
            "confidence": float(confidences[i]),
            "features": {name: float(values[i]) for name, values in features.items()},
            **({"group": group} if group is not None else {}),
        } for i in chosen])
