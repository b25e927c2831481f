"""Feature-extraction fast path: run the frozen base once, train the head on cached features.

When nothing below the head is trainable, every epoch of a normal Trainer loop recomputes the same
base-model outputs. Here they are computed once (in eval mode, batched by length), cached on disk under
``$TRANSFERKIT_CACHE/features/<key>/`` keyed by model, data, max length and pooling, and the head alone is
trained by the same :class:`~transferkit.train.trainer.TransferTrainer` (same optimizer groups, schedule,
batches and seed as the slow path). The head modules are shared with the full model, so the trained
full model is saved as usual afterwards.

Supported for BERT-family classifiers, where the head is ``pooler.dense -> tanh -> dropout ->
classifier`` applied to the first token's final hidden state; other architectures fall back to
training through the frozen base.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transferkit.assets import cache_dir, cache_lock
from transferkit.train.data import TokenizedDataset

logger = logging.getLogger(__name__)


def supports_feature_cache(model: Any) -> bool:
    """Whether the fast path knows where this model's head starts."""
    import torch.nn as nn

    return (
        hasattr(model, "bert") and getattr(model.bert, "pooler", None) is not None
        and isinstance(getattr(model, "classifier", None), nn.Linear) and hasattr(model, "dropout")
    )


def build_head_model(model: Any) -> Any:
    """Return an ``nn.Module`` computing logits from cached features with the model's own head modules."""
    import torch.nn as nn
    from transformers.modeling_outputs import SequenceClassifierOutput

    class _HeadModel(nn.Module):
        """``features -> pooler.dense -> tanh -> dropout -> classifier`` (modules shared with ``model``)."""

        def __init__(self, source: Any) -> None:
            super().__init__()
            self.pooler = source.bert.pooler
            self.dropout = source.dropout
            self.classifier = source.classifier

        def forward(self, features: Any, labels: Any = None) -> Any:
            pooled = self.pooler.activation(self.pooler.dense(features))
            return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))

    return _HeadModel(model)


def _model_fingerprint(model_path: Path, model: Any) -> dict[str, Any]:
    weights = [p for p in sorted(model_path.glob("*.safetensors")) if p.is_file()]
    return {
        "path": str(model_path),
        "weights": [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in weights],
        "config": json.loads(model.config.to_json_string(use_diff=False)),
    }


def cache_key(model_path: Path, model: Any, data_digests: dict[str, str], max_length: int | str) -> str:
    """Key of the cached features: base model files and config (incl. pooling layer), data, max length."""
    payload = {
        "model": _model_fingerprint(model_path, model),
        "data": data_digests,
        "max_length": max_length,
        "format": 1,
    }
    payload["model"]["config"].pop("id2label", None)
    payload["model"]["config"].pop("label2id", None)
    payload["model"]["config"].pop("num_labels", None)
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def compute_features(model: Any, dataset: TokenizedDataset, tokenizer: Any, batch_size: int) -> Any:
    """First-token final hidden states of the frozen base for every example (eval mode, no grad)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import DataCollatorWithPadding

    collator = DataCollatorWithPadding(tokenizer)
    base = model.bert
    device = next(base.parameters()).device
    was_training = base.training
    base.eval()
    order = sorted(range(len(dataset)), key=lambda i: dataset.lengths[i])
    hidden = model.config.hidden_size
    out = torch.empty((len(dataset), hidden), dtype=torch.float32)
    try:
        with torch.inference_mode():
            for start in tqdm(range(0, len(order), batch_size), desc=f"features[{dataset.split.name}]",
                              leave=False, disable=len(order) <= batch_size):
                chunk = order[start : start + batch_size]
                batch = collator([dataset.encodings[i] for i in chunk])
                batch = {k: v.to(device) for k, v in batch.items()}
                states = base(**batch).last_hidden_state[:, 0]
                out[torch.tensor(chunk)] = states.float().cpu()
    finally:
        base.train(was_training)
    return out


def cached_features(
    model: Any,
    model_path: Path,
    datasets: dict[str, TokenizedDataset],
    tokenizer: Any,
    data_digests: dict[str, str],
    batch_size: int,
) -> tuple[dict[str, Any], str, bool]:
    """Load or compute the features of every split.

    Returns:
        ``({split: tensor [n, hidden]}, cache directory, whether they came from the cache)``.

    """
    first = next(iter(datasets.values()))
    max_length = getattr(first, "cache_tag", first.max_length)
    key = cache_key(model_path, model, data_digests, max_length)
    return load_or_compute_features(
        key, {name: len(ds) for name, ds in datasets.items()},
        lambda name: compute_features(model, datasets[name], tokenizer, batch_size),
    )


def load_or_compute_features(
    key: str, sizes: dict[str, int], compute: Callable[[str], Any]
) -> tuple[dict[str, Any], str, bool]:
    """Return the features stored under ``key`` if they cover ``sizes``; else compute, store and return them.

    Args:
        key: Cache key (model, data and input settings).
        sizes: Number of examples per split; a stored file with other sizes is recomputed.
        compute: Computes the feature tensor ``[n, ...]`` of one split.

    Returns:
        ``({split: tensor}, cache directory, whether they came from the cache)``.

    """
    from safetensors.torch import load_file, save_file

    directory = cache_dir() / "features" / key
    file = directory / "features.safetensors"
    with cache_lock(f"features-{key}"):
        if file.is_file():
            try:
                tensors = load_file(str(file))
                if all(name in tensors and tensors[name].shape[0] == size for name, size in sizes.items()):
                    logger.info("Using cached base-model features from %s", directory)
                    return {name: tensors[name] for name in sizes}, str(directory), True
            except Exception as exc:  # a damaged cache file is recomputed, never trusted
                logger.warning("Ignoring unreadable feature cache %s (%s)", file, exc)
        features = {name: compute(name) for name in sizes}
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".features.{id(features)}.tmp"
        save_file({k: v.contiguous() for k, v in features.items()}, str(tmp))
        tmp.replace(file)
        logger.info("Cached base-model features in %s", directory)
    return features, str(directory), False


class FeatureDataset:
    """Cached features with labels (and token lengths, to batch exactly like the slow path)."""

    def __init__(self, features: Any, labels: list[int]) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"features": self.features[index], "labels": self.labels[index]}
