"""Talk to a running Triton: bounded retries, the restricted model-control API, inference helpers.

The restricted-API key is read from an environment variable or a mounted secret file (never from a
command-line argument) and is only ever sent in a request header, never logged.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from transferkit.errors import AuthError, ConfigError, ServerUnavailableError, ServingError
from transferkit.serve.local import RESTRICTED_HEADER

logger = logging.getLogger(__name__)

DEFAULT_KEY_ENV = "TRANSFERKIT_TRITON_API_KEY"


def read_api_key(env_var: str | None = DEFAULT_KEY_ENV, secret_file: str | Path | None = None) -> str | None:
    """Return the model-control key from a secret file (preferred) or an environment variable.

    Raises:
        AuthError: The secret file is named but unreadable or empty.
    """
    if secret_file:
        path = Path(secret_file)
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AuthError(f"{path}: cannot read the model-control key secret ({exc.strerror})") from exc
        if not key:
            raise AuthError(f"{path}: the model-control key secret is empty")
        return key
    if env_var:
        value = os.environ.get(env_var, "").strip()
        return value or None
    return None


def split_url(url: str) -> tuple[str, bool]:
    """``http://host:port`` -> (``host:port``, ssl)."""
    text = url if "://" in url else f"http://{url}"
    parsed = urlparse(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc or not parsed.hostname:
        raise ConfigError(f"triton_url: {url!r} is not an http(s)://host:port URL")
    try:
        port = parsed.port
    except ValueError:
        raise ConfigError(f"triton_url: {url!r} has no valid port; expected an integer in 1-65535") from None
    if port is not None and not 1 <= port <= 65535:
        raise ConfigError(f"triton_url: port {port} in {url!r} is outside 1-65535")
    return parsed.netloc, parsed.scheme == "https"


class TritonControl:
    """HTTP client for model control and inference against one Triton server.

    Args:
        url: ``http(s)://host:port`` of Triton's HTTP endpoint.
        api_key: Restricted model-control key (from :func:`read_api_key`), or None.
        api_key_header: Header name configured with ``--http-restricted-api``.
        attempts: Connection attempts before giving up (bounded exponential backoff).
        backoff_s: First backoff delay, doubled per attempt up to ``max_backoff_s``.
        timeout_s: Network timeout of one call (model loads can take a while).
    """

    def __init__(self, url: str, *, api_key: str | None = None, api_key_header: str = RESTRICTED_HEADER,
                 attempts: int = 5, backoff_s: float = 0.5, max_backoff_s: float = 8.0,
                 timeout_s: float = 300.0) -> None:
        import tritonclient.http as httpclient

        self.url = url
        self._netloc, ssl = split_url(url)
        self._headers = {api_key_header: api_key} if api_key else None
        self.attempts = max(1, attempts)
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.client = httpclient.InferenceServerClient(self._netloc, ssl=ssl, network_timeout=timeout_s,
                                                       connection_timeout=10.0)

    def close(self) -> None:
        """Close pooled connections."""
        self.client.close()

    def __enter__(self) -> TritonControl:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_live(self) -> None:
        """Wait until the server answers ``/v2/health/live``.

        Raises:
            ServerUnavailableError: Still unreachable after the bounded retries.
        """
        delay, last = self.backoff_s, "no answer"
        start = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                if self.client.is_server_live():
                    return
                last = "server not live"
            except Exception as exc:
                last = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}".strip()
            if attempt < self.attempts:
                logger.info("Triton at %s not reachable (attempt %d/%d), retrying in %.1fs",
                            self.url, attempt, self.attempts, delay)
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
        raise ServerUnavailableError(
            f"Triton at {self.url} unreachable after {self.attempts} attempts in "
            f"{time.monotonic() - start:.1f}s ({last})"
        )

    def _control(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        try:
            return fn(*args, headers=self._headers, **kwargs)
        except InferenceServerException as exc:
            message = exc.message() or str(exc)
            status = str(exc.status() or "")
            if status == "403" or "restricted" in message.lower():
                hint = "was rejected" if self._headers else "is required but none was configured"
                raise AuthError(f"Triton at {self.url}: the model-control key {hint} ({what})") from exc
            raise ServingError(f"Triton at {self.url}: {what} failed ({message.splitlines()[0]})") from exc

    def check_control_access(self) -> list[dict[str, Any]]:
        """Call the repository index (a model-control API) to verify access before changing anything.

        Returns:
            The repository index.
        """
        return self._control("repository index", self.client.get_model_repository_index)

    def load(self, model: str) -> None:
        """Load or reload ``model`` (blocks until Triton finished loading it)."""
        self._control(f"load {model!r}", self.client.load_model, model)

    def unload(self, model: str) -> None:
        """Unload ``model``."""
        self._control(f"unload {model!r}", self.client.unload_model, model)

    def is_ready(self, model: str, version: int | None = None) -> bool:
        """Readiness of a model (version)."""
        try:
            return bool(self.client.is_model_ready(model, "" if version is None else str(version)))
        except Exception:
            return False

    def ready_versions(self, model: str) -> list[int]:
        """Versions of ``model`` that Triton reports READY."""
        index = self.check_control_access()
        return sorted(int(e["version"]) for e in index
                      if e.get("name") == model and e.get("state") == "READY" and str(e.get("version", "")).isdigit())

    def infer_texts(self, model: str, texts: list[str], *, version: int | None = None,
                    pairs: list[str] | None = None,
                    outputs: tuple[str, ...] = ("logits", "probabilities", "label")) -> dict[str, np.ndarray]:
        """Send raw strings (and second sentences for pair models) to a text ensemble; return the outputs."""
        columns = {"text": [t.encode("utf-8") for t in texts]}
        if pairs is not None:
            columns["text_pair"] = [t.encode("utf-8") for t in pairs]
        return self._infer_bytes(model, columns, version=version, outputs=outputs)

    def infer_images(self, model: str, images: list[bytes], *, version: int | None = None,
                     outputs: tuple[str, ...] = ("logits", "probabilities", "label")) -> dict[str, np.ndarray]:
        """Send encoded images (PNG, JPEG... bytes, one per row) to an image ensemble; return the outputs.

        Raises:
            ServingError: Triton refused the request (e.g. an undecodable image; its message names the input).
        """
        return self._infer_bytes(model, {"image": list(images)}, version=version, outputs=outputs)

    def _infer_bytes(self, model: str, columns: dict[str, list[bytes]], *, version: int | None,
                     outputs: tuple[str, ...]) -> dict[str, np.ndarray]:
        """One request with ``[N, 1]`` BYTES inputs (sent in binary form)."""
        import tritonclient.http as httpclient
        from tritonclient.utils import InferenceServerException

        tensors = []
        for name, values in columns.items():
            batch = np.empty((len(values), 1), dtype=object)
            batch[:, 0] = values
            tensor = httpclient.InferInput(name, list(batch.shape), "BYTES")
            tensor.set_data_from_numpy(batch)
            tensors.append(tensor)
        wanted = [httpclient.InferRequestedOutput(name) for name in outputs]
        try:
            result = self.client.infer(model, tensors, model_version="" if version is None else str(version),
                                       outputs=wanted)
        except InferenceServerException as exc:
            message = (exc.message() or str(exc)).splitlines()[0]
            raise ServingError(f"Triton at {self.url}: inference on {model!r} failed ({message})") from exc
        return {name: result.as_numpy(name) for name in outputs}
