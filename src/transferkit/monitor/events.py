"""KServe payload-logger input: CloudEvents of logged inference requests and responses -> monitor records.

A KServe ``InferenceService`` whose predictor has ``logger: {mode: all, url: <monitor>/v1/events}`` makes the
KServe agent post every request and its response as a CloudEvent (binary mode: ``ce-id``, ``ce-type``,
``ce-source``, ``ce-specversion`` headers, the payload as the body, ``Content-Type`` that of the request). The
request and its response carry the same ``ce-id``; they may arrive in either order. Structured mode
(``application/cloudevents+json``, ``data`` or ``data_base64``) is accepted too.

The payloads are the Open Inference Protocol (KServe v2) bodies Triton answers: JSON, or JSON followed by binary
tensors (Triton's binary-data extension, ``Inference-Header-Content-Length``). The logged payloads hold no
embedding, so the monitor runs the served graph of the export (:class:`~transferkit.monitor.baseline.ServedGraph`,
the same graph and preprocessing the baseline used) on the logged inputs for the embedding and input features;
the prediction and confidence are the served ones, read from the response's ``probabilities``.
"""

from __future__ import annotations

import base64
import binascii
import json
import threading
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from transferkit.errors import MonitorError

CE_REQUEST = "org.kubeflow.serving.inference.request"
CE_RESPONSE = "org.kubeflow.serving.inference.response"
STRUCTURED = "application/cloudevents+json"
# Requests waiting for their response (or responses for their request); the oldest are forgotten first.
MAX_PENDING = 10_000
_NUMPY = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
          "FP32": np.float32, "FP64": np.float64}


@dataclass(frozen=True)
class CloudEvent:
    """One logged payload.

    Attributes:
        id: ``ce-id``: the same for a request and its response.
        type: :data:`CE_REQUEST` or :data:`CE_RESPONSE`.
        source: ``ce-source`` (the predictor's URL).
        inference_service: ``ce-inferenceservicename`` ("" when absent).
        content_type: Content type of the payload.
        data: The payload bytes.
    """

    id: str
    type: str
    source: str
    inference_service: str
    content_type: str
    data: bytes


def parse_cloudevent(headers: Mapping[str, str], body: bytes) -> CloudEvent:
    """Read a CloudEvent in binary (``ce-*`` headers) or structured (``application/cloudevents+json``) mode.

    Raises:
        MonitorError: A missing attribute or a type other than KServe's inference request/response, by name.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    content_type = lower.get("content-type", "")
    if content_type.split(";")[0].strip() == STRUCTURED:
        try:
            envelope = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise MonitorError(f"body: a structured CloudEvent must be JSON ({exc})") from None
        if not isinstance(envelope, dict):
            raise MonitorError("body: a structured CloudEvent must be a JSON object")
        attributes = {k: str(v) for k, v in envelope.items() if k not in ("data", "data_base64")}
        if "data_base64" in envelope:
            try:
                data = base64.b64decode(str(envelope["data_base64"]), validate=True)
            except (binascii.Error, ValueError):
                raise MonitorError("data_base64: not valid base64") from None
        elif isinstance(envelope.get("data"), str):
            data = envelope["data"].encode("utf-8")
        else:
            data = json.dumps(envelope.get("data")).encode("utf-8")
        payload_type = attributes.get("datacontenttype", "application/json")
    else:
        attributes = {k[3:]: v for k, v in lower.items() if k.startswith("ce-")}
        data, payload_type = body, content_type or "application/json"
    for name in ("id", "type", "specversion"):
        if not attributes.get(name):
            raise MonitorError(f"ce-{name}: missing; expected a CloudEvent from KServe's payload logger")
    if attributes["type"] not in (CE_REQUEST, CE_RESPONSE):
        raise MonitorError(f"ce-type: {attributes['type']!r} is not {CE_REQUEST} or {CE_RESPONSE}")
    return CloudEvent(id=attributes["id"], type=attributes["type"], source=attributes.get("source", ""),
                      inference_service=attributes.get("inferenceservicename", ""), content_type=payload_type,
                      data=data)


def _header_length(data: bytes) -> int | None:
    """Length of the JSON header of a binary-data body: the end of its first complete JSON object."""
    text = data.decode("latin-1")  # one char per byte: the decoder's end index is the byte offset
    try:
        _, end = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return None
    return end


def decode_v2(data: bytes, section: str, where: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tensors of an Open Inference Protocol body (``section`` ``inputs`` or ``outputs``) and its header.

    BYTES tensors become lists of ``bytes`` (binary) or ``str`` (JSON); numeric ones numpy arrays of their shape.

    Raises:
        MonitorError: Not a v2 body, or a tensor whose data does not match its shape, naming ``where`` and it.
    """
    end = _header_length(data)
    if end is None:
        raise MonitorError(f"{where}: not an Open Inference Protocol (KServe v2) JSON body")
    header = json.loads(data[:end].decode("utf-8"))
    if not isinstance(header, dict) or not isinstance(header.get(section), list):
        raise MonitorError(f"{where}: expected a KServe v2 body with an {section!r} list")
    binary, offset, tensors = data[end:], 0, {}
    for index, tensor in enumerate(header[section]):
        name = tensor.get("name") if isinstance(tensor, dict) else None
        label = f"{where}.{section}[{index}]"
        if not isinstance(name, str) or not isinstance(tensor.get("shape"), list):
            raise MonitorError(f"{label}: expected name, shape and datatype")
        dtype, shape = str(tensor.get("datatype", "")), [int(d) for d in tensor["shape"]]
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        if size is not None:
            chunk = binary[offset : offset + int(size)]
            if len(chunk) != int(size):
                raise MonitorError(f"{label} ({name}): binary_data_size {size} but {len(binary) - offset} bytes left")
            offset += int(size)
            tensors[name] = _binary_tensor(chunk, dtype, shape, f"{label} ({name})")
        elif tensor.get("data") is None:
            raise MonitorError(f"{label} ({name}): no data and no binary_data_size")
        elif dtype == "BYTES":
            tensors[name] = [str(v) for v in np.asarray(tensor.get("data"), dtype=object).reshape(-1)]
        elif dtype in _NUMPY:
            try:
                tensors[name] = np.asarray(tensor.get("data"), dtype=_NUMPY[dtype]).reshape(shape)
            except (TypeError, ValueError):
                raise MonitorError(f"{label} ({name}): data does not fill shape {shape} of {dtype}") from None
    return tensors, header


def _binary_tensor(chunk: bytes, dtype: str, shape: list[int], label: str) -> Any:
    if dtype == "BYTES":  # 4-byte little-endian length before each element
        items, offset = [], 0
        while offset < len(chunk):
            length = int.from_bytes(chunk[offset : offset + 4], "little")
            items.append(chunk[offset + 4 : offset + 4 + length])
            offset += 4 + length
        return items
    if dtype not in _NUMPY:
        raise MonitorError(f"{label}: datatype {dtype!r} is not supported")
    try:
        return np.frombuffer(chunk, dtype=np.dtype(_NUMPY[dtype]).newbyteorder("<")).reshape(shape)
    except ValueError:
        raise MonitorError(f"{label}: {len(chunk)} bytes do not fill shape {shape} of {dtype}") from None


def request_items(data: bytes) -> tuple[list[Any], str | None, str | None]:
    """The items of a logged request (its string inputs; several are zipped by input name), id and ``group``.

    Raises:
        MonitorError: No string input, or string inputs of different lengths.
    """
    tensors, header = decode_v2(data, "inputs", "request")
    strings = [tensors[name] for name in sorted(tensors) if isinstance(tensors[name], list)]
    if not strings:
        raise MonitorError("request.inputs: no BYTES input (raw text or encoded images) to monitor")
    if len({len(s) for s in strings}) != 1:
        raise MonitorError("request.inputs: string inputs of different lengths")
    items = list(strings[0]) if len(strings) == 1 else list(zip(*strings, strict=True))
    group = (header.get("parameters") or {}).get("group")
    request_id = header.get("id")
    return items, str(request_id) if request_id else None, str(group) if group is not None else None


def response_probabilities(data: bytes, rows: int, classes: int, name: str = "probabilities") -> np.ndarray | None:
    """The served probabilities ``[rows, classes]`` of a logged response, or None when it does not hold them.

    Raises:
        MonitorError: The output's shape does not match the request's items and the baseline's classes.
    """
    tensors, _ = decode_v2(data, "outputs", "response")
    values = tensors.get(name)
    if values is None or isinstance(values, list):
        return None
    if values.size != rows * classes:
        raise MonitorError(f"response.outputs ({name}): {values.size} values for {rows} items of {classes} classes")
    return values.reshape(rows, classes).astype(np.float64)


class EventIngester:
    """Pairs logged requests with their responses and turns each pair into monitor records.

    Args:
        monitor: The :class:`~transferkit.monitor.state.Monitor` the records go to.
        graph: The served graph of the export (embeddings and input features of the logged inputs), or None
            when the monitor was started without the export directory (events are then refused).
        sample_rate: Fraction of request ids kept (by a hash of the id, so a request and its response agree).
    """

    def __init__(self, monitor: Any, graph: Any | None, sample_rate: float = 1.0) -> None:
        if not 0.0 < sample_rate <= 1.0:
            raise MonitorError(f"event_sample_rate: expected a fraction in (0, 1], got {sample_rate}")
        self.monitor, self.graph, self.sample_rate = monitor, graph, sample_rate
        self._pending: OrderedDict[str, dict[str, CloudEvent]] = OrderedDict()
        self._lock = threading.Lock()

    def kept(self, event_id: str) -> bool:
        """Whether ``event_id`` is in the sampled fraction."""
        return self.sample_rate >= 1.0 or zlib.crc32(event_id.encode()) / 2**32 < self.sample_rate

    def accept(self, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        """Take one event; when it completes a request/response pair, add the pair's records to the monitor.

        Returns:
            ``{"event": type, "records": n}`` (n = 0 while the pair is incomplete or the id is not sampled).

        Raises:
            MonitorError: A malformed event or payload, or no export graph to compute embeddings with.
        """
        event = parse_cloudevent(headers, body)
        if self.graph is None:
            raise MonitorError("events: the monitor needs the export directory (--baseline EXPORT_DIR with "
                               "io_spec.json) to compute embeddings of logged payloads")
        kind = "request" if event.type == CE_REQUEST else "response"
        if not self.kept(event.id):
            return {"event": kind, "records": 0}
        if kind == "request":
            request_items(event.data)  # a malformed request is refused now, not when its response comes
        with self._lock:
            pair = self._pending.setdefault(event.id, {})
            pair[kind] = event
            if len(pair) < 2:
                while len(self._pending) > MAX_PENDING:
                    self._pending.popitem(last=False)
                return {"event": kind, "records": 0}
            del self._pending[event.id]
        return {"event": kind, "records": self.monitor.add(self.records(pair["request"], pair["response"]))}

    def records(self, request: CloudEvent, response: CloudEvent) -> list[dict[str, Any]]:
        """Monitor records of one request/response pair (served prediction; graph embedding and features)."""
        items, body_id, group = request_items(request.data)
        try:
            computed = self.graph.run(items)
        except ValueError as exc:  # an input the served preprocessing refuses (e.g. not an image)
            raise MonitorError(f"request {request.id}: {exc}") from None
        labels = self.monitor.baseline.labels
        served = response_probabilities(response.data, len(items), len(labels))
        predictions = served.argmax(1) if served is not None else computed["predictions"]
        confidences = served.max(1) if served is not None else computed["confidences"]
        base = body_id or request.id
        features = self.graph.inputs.features
        return [{
            "request_id": base if len(items) == 1 else f"{base}-{i}",
            "embedding": computed["embeddings"][i].tolist(), "prediction": int(predictions[i]),
            "confidence": float(min(1.0, max(0.0, confidences[i]))),
            "features": {name: float(computed[name][i]) for name in features},
            **({"group": group} if group is not None else {}),
        } for i in range(len(items))]
