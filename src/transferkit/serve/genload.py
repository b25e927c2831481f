"""Token-level load generator for generative models on Triton (``generate_stream``, server-sent events).

Per concurrency level a bounded number of streaming requests run from that many client threads; each request
records its time to first token (TTFT), the gaps between later pieces (inter-token latency, ITL) and the pieces
received. A piece is one server-sent event: one new token's text (a token that completes no character, rare,
arrives with the next one). Output tokens/s is the pieces of the level over its wall time. Failed requests
(HTTP errors, error events, timeouts) are counted, and the first error is kept.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferkit.errors import ConfigError, TransferkitError

DEFAULT_PROMPTS = ("We propose a new parser for long documents and evaluate it on three benchmarks.",
                   "This paper studies how transfer learning helps small models summarize scientific abstracts.")


def is_generative_model(http_url: str, model: str, timeout: float = 10.0) -> bool:
    """True when Triton reports ``model`` as decoupled (a streaming generative model)."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"{http_url}/v2/models/{model}/config", timeout=timeout) as response:
            config = json.loads(response.read())
    except (OSError, ValueError):
        return False
    return bool((config.get("model_transaction_policy") or {}).get("decoupled"))


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p95": float("nan"), "p99": float("nan")}
    array = np.asarray(values) * 1000
    return {f"p{q}": round(float(np.percentile(array, q)), 3) for q in (50, 95, 99)}


@dataclass
class GenerativeLevel:
    """Results of one concurrency level."""

    concurrency: int
    requests: int
    failed: int
    duration_s: float
    output_tokens: int
    output_tokens_per_s: float
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]
    first_error: str | None = None


@dataclass
class GenerativeLoadResult:
    """All levels against one model."""

    model: str
    max_tokens: int
    levels: list[GenerativeLevel] = field(default_factory=list)

    @property
    def failed_requests(self) -> int:
        """Failed requests over all levels."""
        return sum(level.failed for level in self.levels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view."""
        return {"model": self.model, "max_tokens": self.max_tokens, "failed_requests": self.failed_requests,
                "levels": [asdict(level) for level in self.levels]}


def run_generative_load(http_url: str, model: str, *, concurrency: tuple[int, ...] = (1, 4), requests: int = 16,
                        max_tokens: int = 32, prompts: tuple[str, ...] = DEFAULT_PROMPTS, timeout_s: float = 120.0,
                        **params: Any) -> GenerativeLoadResult:
    """Stream ``requests`` generations per concurrency level (see the module docstring).

    Args:
        http_url: Triton HTTP endpoint.
        model: The decoupled generative model.
        concurrency: Client threads per level.
        requests: Requests per level.
        max_tokens: ``max_tokens`` of every request.
        prompts: Prompt texts, used round-robin.
        timeout_s: Socket timeout of one request.
        **params: More request parameters (``temperature``, ``top_p``, ``seed``).

    Raises:
        ConfigError: A level, request count or max_tokens below 1, or no prompts.
    """
    from transferkit.serve.generative import stream_generate

    if not prompts or requests < 1 or max_tokens < 1 or any(c < 1 for c in concurrency):
        raise ConfigError("generative load: concurrency levels, requests and max_tokens must be >= 1 and prompts "
                          "non-empty")
    result = GenerativeLoadResult(model=model, max_tokens=max_tokens)
    for level in concurrency:
        ttft: list[float] = []
        gaps: list[float] = []
        counts = {"tokens": 0, "failed": 0, "next": 0}
        errors: list[str] = []
        lock = threading.Lock()

        def worker() -> None:
            while True:
                with lock:  # noqa: B023 - each level's worker reads its own level's state
                    index = counts["next"]  # noqa: B023
                    if index >= requests:
                        return
                    counts["next"] += 1  # noqa: B023
                try:
                    times = [p.at for p in stream_generate(http_url, model, prompts[index % len(prompts)],
                                                           timeout=timeout_s, max_tokens=max_tokens, **params)]
                except (TransferkitError, OSError, ValueError) as exc:
                    with lock:  # noqa: B023
                        counts["failed"] += 1  # noqa: B023
                        errors.append(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)  # noqa: B023
                    continue
                with lock:  # noqa: B023
                    counts["tokens"] += len(times)  # noqa: B023
                    if times:
                        ttft.append(times[0])  # noqa: B023
                        gaps.extend(np.diff(times).tolist())  # noqa: B023

        started = time.perf_counter()
        threads = [threading.Thread(target=worker, name=f"genload-{i}", daemon=True) for i in range(level)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        duration = time.perf_counter() - started
        result.levels.append(GenerativeLevel(
            concurrency=level, requests=requests, failed=counts["failed"], duration_s=round(duration, 3),
            output_tokens=counts["tokens"], output_tokens_per_s=round(counts["tokens"] / max(duration, 1e-9), 2),
            ttft_ms=_percentiles(ttft), itl_ms=_percentiles(gaps), first_error=errors[0] if errors else None))
    return result
