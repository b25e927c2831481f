"""Serving generative exports on Triton: the decoupled python-backend repository and a streaming client.

``build_generative_repository`` turns an export of :mod:`transferkit.export.generative` into a Triton model:
``<name>/config.pbtxt`` (production: GPU instance), ``<name>/configs/local.pbtxt`` (this machine: CPU
instance), ``<name>/<version>/model.py`` (:mod:`transferkit.serve.triton_models.generate_model`),
``generation_spec.json`` and ``model/`` (the chosen variant's folder). Both configs are decoupled: the model
answers on ``generate``, ``generate_stream`` (server-sent events) and gRPC streaming.

``stream_generate`` reads ``generate_stream`` and yields every piece of text with its arrival time; ``generate``
posts to ``generate`` and returns the whole text. Errors of the server come back as :class:`ServingError`
with Triton's one-line message and the HTTP status.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from transferkit.errors import ServingError

logger = logging.getLogger(__name__)

SPEC_FILE = "generation_spec.json"
MODEL_FILE = "generate_model.py"
_INPUTS = (("max_tokens", "TYPE_INT32"), ("temperature", "TYPE_FP32"), ("top_p", "TYPE_FP32"),
           ("seed", "TYPE_INT64"), ("stream", "TYPE_BOOL"), ("adapter", "TYPE_STRING"))


def read_spec(export_dir: Path | str) -> dict[str, Any]:
    """The export's ``generation_spec.json``.

    Raises:
        ServingError: Not a generative export.
    """
    path = Path(export_dir) / SPEC_FILE
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ServingError(f"{path}: not a generative export ({type(exc).__name__}); run `transferkit export` on a "
                           "generative model first") from None
    if spec.get("kind") != "generative":
        raise ServingError(f"{path}: kind {spec.get('kind')!r} is not 'generative'")
    return spec


def model_config(name: str, *, kind: str, concurrency: int) -> str:
    """A decoupled python-backend ``config.pbtxt`` (``kind``: ``KIND_CPU`` or ``KIND_GPU``)."""
    inputs = ['  { name: "text_input" data_type: TYPE_STRING dims: [ 1 ] }']
    inputs += [f'  {{ name: "{n}" data_type: {t} dims: [ 1 ] optional: true }}' for n, t in _INPUTS]
    joined = ",\n".join(inputs)
    return (f'name: "{name}"\nbackend: "python"\nmax_batch_size: 0\n'
            "model_transaction_policy { decoupled: true }\n"
            f"input [\n{joined}\n]\n"
            'output [\n  { name: "text_output" data_type: TYPE_STRING dims: [ -1 ] }\n]\n'
            f"instance_group [ {{ count: 1 kind: {kind} }} ]\n"
            f'parameters {{ key: "max_concurrent_requests" value {{ string_value: "{concurrency}" }} }}\n')


def build_generative_repository(export_dir: Path | str, repository: Path | str, name: str, *,
                                variant: str | None = None, version: int = 1, concurrency: int = 4,
                                threads: int | None = None, production_kind: str = "KIND_GPU") -> Path:
    """Write (or add a version to) the Triton model ``name`` serving an exported generative model.

    Args:
        export_dir: Output of ``transferkit export`` on a generative model.
        repository: Model repository folder.
        name: Triton model name.
        variant: Variant to serve (default: the export's recommended one).
        version: Version folder to write.
        concurrency: Requests generated at once (worker threads, one KV cache each).
        threads: intra-op threads per generation (default: the export's).
        production_kind: Instance kind of the production ``config.pbtxt`` (``KIND_GPU`` or ``KIND_CPU``).

    Returns:
        The version folder.

    Raises:
        ServingError: Not a generative export, or an unknown or dropped variant.
    """
    from transferkit.serve.repository import validate_model_name

    export_dir = Path(export_dir)
    spec = read_spec(export_dir)
    validate_model_name(name)
    if production_kind not in ("KIND_GPU", "KIND_CPU"):
        raise ServingError(f"production_kind: expected KIND_GPU or KIND_CPU, got {production_kind!r}")
    chosen = variant or spec["recommended"]
    if chosen not in spec["variants"]:
        raise ServingError(f"variant: {chosen!r} is not in {export_dir / SPEC_FILE} (kept: "
                           f"{', '.join(spec['variants'])})")
    model_root = Path(repository) / name
    final = model_root / str(version)
    staging = model_root / f".{version}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        shutil.copytree(export_dir / spec["variants"][chosen]["dir"], staging / "model")
        if threads is not None:
            path = staging / "model" / "genai_config.json"
            genai = json.loads(path.read_text(encoding="utf-8"))
            genai["model"]["decoder"].setdefault("session_options", {})["intra_op_num_threads"] = int(threads)
            path.write_text(json.dumps(genai, indent=4) + "\n", encoding="utf-8")
        (staging / SPEC_FILE).write_text(json.dumps({**spec, "served_variant": chosen}, indent=2) + "\n",
                                         encoding="utf-8")
        source = resources.files("transferkit.serve.triton_models") / MODEL_FILE
        (staging / "model.py").write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
        shutil.rmtree(final, ignore_errors=True)
        staging.replace(final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (model_root / "configs").mkdir(exist_ok=True)
    local = model_root / "configs" / "local.pbtxt"
    for path, kind in ((model_root / "config.pbtxt", production_kind), (local, "KIND_CPU")):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(model_config(name, kind=kind, concurrency=concurrency), encoding="utf-8")
        tmp.replace(path)
    logger.info("Wrote %s (variant %s, version %d)", final, chosen, version)
    return final


@dataclass
class StreamPiece:
    """One piece of streamed text and seconds since the request was sent."""

    text: str
    at: float


def _request(url: str, model: str, endpoint: str, text: str, params: dict[str, Any],
             version: int | None = None) -> urllib.request.Request:
    body = json.dumps({"text_input": text, **{k: v for k, v in params.items() if v is not None}}).encode()
    path = f"{model}/versions/{version}" if version is not None else model
    return urllib.request.Request(f"{url.rstrip('/')}/v2/models/{path}/{endpoint}", data=body,
                                  headers={"Content-Type": "application/json"})


def _http_error(exc: urllib.error.HTTPError) -> ServingError:
    body = (exc.read() or b"").decode("utf-8", errors="replace").strip()
    body = body.removeprefix("data:").strip()  # generate_stream sends its error as an event
    try:
        message = json.loads(body or "{}").get("error", exc.reason)
    except ValueError:
        message = body.splitlines()[0] if body else str(exc.reason)
    error = ServingError(f"HTTP {exc.code}: {message}")
    error.status = exc.code  # type: ignore[attr-defined]
    return error


def generate(url: str, model: str, text: str, *, timeout: float = 120.0, version: int | None = None,
             **params: Any) -> str:
    """POST ``generate`` (of ``version``, default: the served one): the whole generated text.

    Raises:
        ServingError: The server refused the request (``status`` attribute: the HTTP code).
    """
    try:
        with urllib.request.urlopen(_request(url, model, "generate", text, params, version),
                                    timeout=timeout) as response:
            return str(json.loads(response.read())["text_output"])
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from None


def stream_generate(url: str, model: str, text: str, *, timeout: float = 120.0, version: int | None = None,
                    **params: Any) -> Iterator[StreamPiece]:
    """POST ``generate_stream`` (server-sent events) and yield each piece as it arrives.

    Raises:
        ServingError: The server refused the request or sent an error event.
    """
    started = time.perf_counter()
    request = _request(url, model, "generate_stream", text, {**params, "stream": True}, version)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from None
    with response:
        # read1 returns what has arrived (iterating lines would wait for a full 8 KB buffer of a chunked body).
        pending = b""
        while chunk := response.read1(65536):
            pending += chunk
            *lines, pending = pending.split(b"\n")
            arrived = time.perf_counter() - started
            for raw in lines:
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:"):
                    continue
                event = json.loads(line[5:])
                if "error" in event:
                    raise ServingError(f"stream error: {event['error']}")
                piece = event.get("text_output")
                if piece:
                    yield StreamPiece(str(piece), arrived)
