"""Built-in datasets fetched from package registries (never from dataset hubs) and cached.

- ``builtin:movie-sentiment``: 10,6xx movie-review sentences with mean human ratings in [-4, 4] from
  the VADER sentiment study (``vaderSentiment==3.3.2`` sdist, ``hutto_ICWSM_2014.tar.gz``). Label is
  ``positive`` when the rating is > 0 and ``negative`` when < 0; sentences rated exactly 0 are dropped.
- ``builtin:lee-similarity``: the Lee et al. (2005) corpus of 50 news documents and 1,225 human-rated
  document pairs, bundled as test data in ``gensim==4.4.0``; the source task for the forgetting check.
"""

from __future__ import annotations

import io
import logging
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from transferkit.assets import cache_dir, cache_lock, fetch_distribution
from transferkit.errors import AssetError, DatasetNotFoundError
from transferkit.io import replace_dir

logger = logging.getLogger(__name__)

PREFIX = "builtin:"


@dataclass(frozen=True)
class BuiltinDataset:
    """A dataset that transferkit can fetch from a package registry."""

    name: str
    kind: str  # "classification" (text,label) or "similarity-pairs" (text_a,text_b,score)
    description: str
    source: str
    build: Callable[[], pa.Table]


def _movie_sentiment() -> pa.Table:
    sdist = fetch_distribution("vaderSentiment==3.3.2", source=True)
    member_suffix = "additional_resources/hutto_ICWSM_2014.tar.gz"
    try:
        with tarfile.open(sdist) as outer:
            inner_member = next(m for m in outer.getmembers() if m.name.endswith(member_suffix))
            inner_bytes = outer.extractfile(inner_member).read()  # type: ignore[union-attr]
        with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
            gt = next(m for m in inner.getmembers() if m.name.endswith("movieReviewSnippets_GroundTruth.txt"))
            raw = inner.extractfile(gt).read().decode("utf-8")  # type: ignore[union-attr]
    except (StopIteration, tarfile.TarError, OSError) as exc:
        raise AssetError(f"{sdist}: movie review snippets not found in the VADER sdist ({exc})") from exc
    texts, labels, ratings, ids = [], [], [], []
    for line in raw.splitlines():
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        rating = float(parts[1])
        if rating == 0:
            continue
        ids.append(int(parts[0]))
        ratings.append(rating)
        texts.append(parts[2].strip())
        labels.append("positive" if rating > 0 else "negative")
    return pa.table({"id": ids, "text": texts, "label": labels, "rating": ratings})


def _lee_similarity() -> pa.Table:
    wheel = fetch_distribution("gensim==4.4.0")
    try:
        with zipfile.ZipFile(wheel) as archive:
            corpus = archive.read("gensim/test/test_data/lee.cor").decode("utf-8", errors="replace")
            matrix_text = archive.read("gensim/test/test_data/similarities0-1.txt").decode("utf-8")
    except (KeyError, zipfile.BadZipFile) as exc:
        raise AssetError(f"{wheel}: Lee corpus not found in the gensim wheel ({exc})") from exc
    documents = [line.strip() for line in corpus.splitlines() if line.strip()]
    matrix = [[float(v) for v in row.split()] for row in matrix_text.splitlines() if row.strip()]
    if len(documents) != len(matrix):
        raise AssetError(f"{wheel}: Lee corpus has {len(documents)} documents but {len(matrix)} rows")
    text_a, text_b, scores, doc_a, doc_b = [], [], [], [], []
    for i in range(len(documents)):
        for j in range(i + 1, len(documents)):
            text_a.append(documents[i])
            text_b.append(documents[j])
            scores.append(matrix[i][j])
            doc_a.append(i)
            doc_b.append(j)
    return pa.table({"doc_a": doc_a, "doc_b": doc_b, "text_a": text_a, "text_b": text_b, "score": scores})


BUILTINS: dict[str, BuiltinDataset] = {
    d.name: d
    for d in (
        BuiltinDataset(
            "movie-sentiment", "classification",
            "Movie-review sentences, binary sentiment from mean human ratings (VADER study)",
            "pypi:vaderSentiment==3.3.2 (sdist)", _movie_sentiment,
        ),
        BuiltinDataset(
            "lee-similarity", "similarity-pairs",
            "Lee corpus: 50 news documents, 1,225 human-rated document pairs",
            "pypi:gensim==4.4.0 (test data)", _lee_similarity,
        ),
    )
}


def is_builtin(uri: str) -> bool:
    """Whether ``uri`` names a built-in dataset."""
    return str(uri).startswith(PREFIX)


def get_builtin(uri: str) -> BuiltinDataset:
    """Look up a built-in by ``builtin:NAME`` or ``NAME``."""
    name = str(uri).removeprefix(PREFIX)
    if name not in BUILTINS:
        raise DatasetNotFoundError(f"{uri}: unknown built-in dataset; known: "
                                   + ", ".join(PREFIX + n for n in sorted(BUILTINS)))
    return BUILTINS[name]


def load_builtin(uri: str) -> pa.Table:
    """Return a built-in dataset as a table, building and caching it as Parquet on first use."""
    dataset = get_builtin(uri)
    target = cache_dir() / "datasets" / dataset.name
    data_file = target / "data.parquet"
    with cache_lock(f"dataset-{dataset.name}"):
        if not data_file.is_file():
            table = dataset.build()
            staging = target.with_name(f".{dataset.name}.staging")
            staging.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, staging / "data.parquet")
            replace_dir(staging, target)
            logger.info("Cached %s (%d rows) in %s", uri, table.num_rows, target)
    return pq.read_table(data_file)


def builtin_path(uri: str) -> Path:
    """Return the cached Parquet file of a built-in dataset (building it first if needed)."""
    load_builtin(uri)
    return cache_dir() / "datasets" / get_builtin(uri).name / "data.parquet"
