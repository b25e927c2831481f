"""Replay of labelled traffic for checks, benchmarks and the walk-through.

:func:`vader_corpus` reads the four corpora of the VADER study archive (the ``vaderSentiment==3.3.2`` sdist,
the same archive ``builtin:movie-sentiment`` comes from): movie reviews, tweets, Amazon product reviews and
New York Times editorial snippets, with the same labelling (mean rating > 0 positive, 0 dropped). The other
three are the shifted traffic for a movie-sentiment model. :func:`replay_windows` pushes rows through a
:class:`~transferkit.monitor.baseline.ServedGraph` into a :class:`~transferkit.monitor.state.Monitor`.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from transferkit.errors import AssetError, MonitorError

CORPORA = {
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
}


def vader_corpus(name: str) -> tuple[list[str], list[str]]:
    """Texts and ``negative``/``positive`` labels of one corpus of the VADER archive.

    Raises:
        MonitorError: Unknown corpus name.
        AssetError: The sdist or the file inside it is missing.
    """
    from transferkit.assets import fetch_distribution

    if name not in CORPORA:
        raise MonitorError(f"corpus: {name!r} is not one of {sorted(CORPORA)}")
    sdist = fetch_distribution("vaderSentiment==3.3.2", source=True)
    try:
        with tarfile.open(sdist) as outer:
            member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
            inner_bytes = outer.extractfile(member).read()  # type: ignore[union-attr]
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            found = next(m for m in inner.getmembers() if m.name.endswith(CORPORA[name]))
            raw = inner.extractfile(found).read().decode("utf-8", errors="replace")  # type: ignore[union-attr]
    except (StopIteration, tarfile.TarError, OSError) as exc:
        raise AssetError(f"{sdist}: {CORPORA[name]} not found in the VADER sdist ({exc})") from exc
    texts, labels = [], []
    for line in raw.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or float(parts[1]) == 0:
            continue
        texts.append(parts[2].strip())
        labels.append("positive" if float(parts[1]) > 0 else "negative")
    return texts, labels


def records_from_outputs(outputs: dict[str, np.ndarray], features: Sequence[str], prefix: str,
                         groups: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Records as the serving side posts them, from :meth:`ServedGraph.run` outputs."""
    return [{"request_id": f"{prefix}-{i}", "embedding": outputs["embeddings"][i].tolist(),
             "prediction": int(outputs["predictions"][i]), "confidence": float(outputs["confidences"][i]),
             "features": {name: float(outputs[name][i]) for name in features},
             **({"group": groups[i]} if groups is not None else {})}
            for i in range(len(outputs["predictions"]))]


def replay_triton(url: str, model: str, texts: Sequence[str], request_ids: Sequence[str],
                  concurrency: int = 8) -> list[str]:
    """Send each text as one inference request (with its request id) to a Triton text model; return the labels.

    Raises:
        ServerUnavailableError: Triton is not reachable.
        ServingError: A request failed.
    """
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    from transferkit.errors import ServerUnavailableError, ServingError

    host = url.split("://", 1)[-1].rstrip("/")
    client = httpclient.InferenceServerClient(host, concurrency=concurrency, network_timeout=120)
    try:
        if not client.is_model_ready(model):
            raise ServerUnavailableError(f"{url}: model {model!r} is not ready")
        pending = []
        for text, request_id in zip(texts, request_ids, strict=True):
            tensor = httpclient.InferInput("text", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[text.encode("utf-8")]], dtype=object))
            pending.append(client.async_infer(model, [tensor], request_id=request_id))
        labels = []
        for request in pending:
            result = request.get_result()
            labels.append(result.as_numpy("label").reshape(-1)[0].decode("utf-8"))
        return labels
    except InferenceServerException as exc:
        raise ServingError(f"{url}: inference on {model!r} failed: {exc.message()}") from None
    except ConnectionError as exc:
        raise ServerUnavailableError(f"{url}: Triton not reachable ({exc})") from None
    finally:
        client.close()
