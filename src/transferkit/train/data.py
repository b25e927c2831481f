"""Training data: tokenised splits, seeded augmentation, length-grouped sampling, class weights.

Examples are tokenised once without padding; :class:`transformers.DataCollatorWithPadding` pads each
batch to its own longest example (movie sentences: p50 26 tokens, p99 55, so padding every batch to a
fixed ``max_length`` would mostly compute on padding). Everything random here is a pure function of
``(seed, epoch, example index)`` so that a run resumed from a checkpoint sees exactly the batches and
augmentations an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from transferkit.data.prepared import PreparedDataset
from transferkit.errors import PreparedDataError

logger = logging.getLogger(__name__)


@dataclass
class Split:
    """One split of a prepared dataset, checked and ready for tokenisation."""

    name: str
    texts: list[str]
    text_pairs: list[str] | None
    labels: list[int]


def read_split(dataset: PreparedDataset, split: str, *, required: bool = True) -> Split:
    """Read and check one split: non-null texts, label ids within ``labels.json``, matching label names.

    Raises:
        PreparedDataError: Naming the file and first bad row.

    """
    file = dataset.path / f"{split}.parquet"
    table = dataset.table(split)
    if table.num_rows == 0 and required:
        raise PreparedDataError(f"{file}: split {split!r} is empty; training needs at least one example")
    texts = dataset.texts(split)
    pairs = dataset.text_pairs(split)
    raw_labels = table.column("label").to_pylist()
    names = table.column("label_name").to_pylist() if "label_name" in table.column_names else None
    count = len(dataset.labels)
    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise PreparedDataError(f"{file}: row {row}: column 'text' is {text!r}, expected a string")
    if pairs is not None:
        for row, text in enumerate(pairs):
            if not isinstance(text, str):
                raise PreparedDataError(f"{file}: row {row}: column 'text_pair' is {text!r}, expected a string")
    labels: list[int] = []
    for row, value in enumerate(raw_labels):
        if value is None or isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
            raise PreparedDataError(
                f"{file}: row {row}: label {value!r} is not an id in labels.json (0..{count - 1})"
            )
        if names is not None and names[row] != dataset.labels[value]:
            raise PreparedDataError(
                f"{file}: row {row}: label_name {names[row]!r} disagrees with labels.json[{value}] "
                f"= {dataset.labels[value]!r}"
            )
        labels.append(int(value))
    return Split(split, texts, pairs, labels)


def file_digest(path: Any) -> str:
    """SHA-256 of a file (used to fingerprint data for caches and resume checks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _rng(seed: int, epoch: int, index: int) -> random.Random:
    # A string seed hashes deterministically across processes (unlike hash() of a tuple).
    return random.Random(f"{seed}:{epoch}:{index}")


class TokenizedDataset:
    """A map-style dataset of tokenised examples; optional seeded augmentation of training examples.

    Args:
        split: The split to serve.
        tokenizer: A Hugging Face tokenizer.
        max_length: Truncation length.
        augment: ``none``, ``word_dropout`` (drop words before tokenising) or ``token_mask`` (replace
            non-special tokens with the mask token).
        augment_prob: Per-word / per-token probability.
        seed: Seed of the augmentation.

    """

    def __init__(
        self,
        split: Split,
        tokenizer: Any,
        max_length: int,
        *,
        augment: str = "none",
        augment_prob: float = 0.0,
        seed: int = 0,
        text_inputs: Any = None,
    ) -> None:
        self.split = split
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.cache_tag: Any = max_length
        self.augment = augment if augment_prob > 0 else "none"
        self.augment_prob = augment_prob
        self.seed = seed
        self.epoch = 0
        self.doc_index: Any = None
        if text_inputs is not None:
            # tail / head_tail truncation or chunk windows (transferkit.data.long_text); windows keep the label.
            from transferkit.data.long_text import encode_documents

            self.encodings, self.doc_index = encode_documents(tokenizer, split.texts, text_inputs)
            self.cache_tag = f"{max_length}:{text_inputs.truncation}:{text_inputs.long_documents}:{text_inputs.stride}"
        else:
            encoded = tokenizer(
                split.texts, split.text_pairs, truncation=True, max_length=max_length, padding=False
            ) if split.text_pairs is not None else tokenizer(
                split.texts, truncation=True, max_length=max_length, padding=False
            )
            keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
            self.encodings = [{k: encoded[k][i] for k in keys} for i in range(len(split.texts))]
        self.lengths = [len(e["input_ids"]) for e in self.encodings]
        if self.augment == "token_mask" and tokenizer.mask_token_id is None:
            raise PreparedDataError(
                f"augment: tokenizer {type(tokenizer).__name__} has no mask token; use word_dropout"
            )
        self._special = set(tokenizer.all_special_ids)

    @property
    def labels(self) -> list[int]:
        """Label id of every example (of every window's text when documents are chunked)."""
        if self.doc_index is None:
            return list(self.split.labels)
        return [self.split.labels[int(i)] for i in self.doc_index]

    def set_epoch(self, epoch: int) -> None:
        """Called by the data loader at each epoch start (augmentation differs per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item: dict[str, Any] = dict(self.encodings[index])
        if self.augment == "word_dropout":
            item = self._word_dropout(index)
        elif self.augment == "token_mask":
            rng = _rng(self.seed, self.epoch, index)
            mask_id = self.tokenizer.mask_token_id
            item["input_ids"] = [
                mask_id if tok not in self._special and rng.random() < self.augment_prob else tok
                for tok in item["input_ids"]
            ]
        item["labels"] = self.split.labels[index if self.doc_index is None else int(self.doc_index[index])]
        return item

    def _word_dropout(self, index: int) -> dict[str, Any]:
        rng = _rng(self.seed, self.epoch, index)

        def drop(text: str) -> str:
            words = text.split()
            kept = [w for w in words if rng.random() >= self.augment_prob]
            return " ".join(kept or words[:1])

        text = drop(self.split.texts[index])
        if self.split.text_pairs is not None:
            encoded = self.tokenizer(text, drop(self.split.text_pairs[index]), truncation=True,
                                     max_length=self.max_length)
        else:
            encoded = self.tokenizer(text, truncation=True, max_length=self.max_length)
        return {k: encoded[k] for k in self.encodings[index]}


class DocumentWindows:
    """The chunked training documents, one item per document holding all its windows (``--chunk-loss document``).

    Args:
        windows: A :class:`TokenizedDataset` of chunk windows (its ``doc_index`` set).
    """

    def __init__(self, windows: TokenizedDataset) -> None:
        self.windows = windows
        self.augment = windows.augment
        self.groups: list[list[int]] = [[] for _ in windows.split.labels]
        for window, document in enumerate(windows.doc_index):
            self.groups[int(document)].append(window)
        self.lengths = [sum(windows.lengths[i] for i in group) for group in self.groups]

    @property
    def labels(self) -> list[int]:
        """Label id of every document."""
        return list(self.windows.split.labels)

    def set_epoch(self, epoch: int) -> None:
        """Augmentation of the windows differs per epoch."""
        self.windows.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, index: int) -> dict[str, Any]:
        windows = [self.windows[i] for i in self.groups[index]]
        for window in windows:
            window.pop("labels")
        return {"windows": windows, "labels": self.windows.split.labels[index]}


class DocumentCollator:
    """Pads the windows of a batch of documents into one batch; adds each window's position ``doc_ids``.

    Batches of plain examples (validation windows) go to ``pad`` unchanged.
    """

    def __init__(self, pad: Any) -> None:
        self.pad = pad

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        """One padded batch; of documents' windows (with ``doc_ids`` and per-document ``labels``) or plain."""
        import torch

        if "windows" not in features[0]:
            return self.pad(features)
        flat = [window for feature in features for window in feature["windows"]]
        batch = self.pad(flat)
        batch["doc_ids"] = torch.tensor([d for d, feature in enumerate(features) for _ in feature["windows"]])
        batch["labels"] = torch.tensor([feature["labels"] for feature in features])
        return batch


class SeededLengthGroupedSampler:
    """Length-grouped random order that depends only on ``(seed, epoch)``.

    Uses transformers' ``get_length_grouped_indices`` (mega-batches sorted by length, longest batch first)
    with a generator seeded per epoch, instead of the global RNG that ``LengthGroupedSampler`` draws from
    and that differs after a resume.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch`` (called by the data loader)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        import torch
        from transformers.trainer_pt_utils import get_length_grouped_indices

        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def class_weight_vector(spec: str | list[float], labels: list[int], num_labels: int) -> list[float] | None:
    """Resolve ``none`` / ``balanced`` / explicit weights into one weight per label id.

    ``balanced`` uses scikit-learn's ``n_samples / (n_classes * count)``; a class absent from the training
    split gets weight 1.

    Raises:
        PreparedDataError: An explicit list has the wrong length.

    """
    if spec == "none":
        return None
    if isinstance(spec, list):
        if len(spec) != num_labels:
            raise PreparedDataError(
                f"class_weights: got {len(spec)} weights for {num_labels} labels in labels.json"
            )
        return [float(w) for w in spec]
    import numpy as np
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(labels)
    computed = compute_class_weight("balanced", classes=present, y=np.asarray(labels))
    weights = [1.0] * num_labels
    for cls, weight in zip(present.tolist(), computed.tolist(), strict=True):
        weights[int(cls)] = float(weight)
    return weights
