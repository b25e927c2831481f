"""The text-classification side of a fine-tune run (see :mod:`transferkit.train.side`).

A tokenizer and ``AutoModelForSequenceClassification``: a new head (or random initialisation for
``scratch``), optional mean pooling, freezing by transformer layer, tokenized datasets padded per batch,
the cached-feature path for a frozen encoder, and for ``off_the_shelf`` either a head whose labels already
fit or zero-shot classification by label embeddings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data.long_text import (
    TextInputs,
    auto_max_length,
    auto_sample_rows,
    check_long_document_options,
    special_token_count,
)
from transferkit.errors import ConfigError, ModelError, TrainingError
from transferkit.io import write_json
from transferkit.train.side import TrainingSide, resolve_hyperparameters

logger = logging.getLogger(__name__)

IMAGE_ONLY_AUGMENTATIONS = ("image", "image_no_flip")


def text_side_for(config: Any, dataset: Any, resolved: Any) -> TextSide:
    """Check the options that apply to text, read the splits, load the tokenizer and resolve hyperparameters.

    Raises:
        ConfigError: An image-only option, or ``max_length`` beyond the model's limit.
        PreparedDataError: A split with bad rows.
        ModelError: The tokenizer does not load.

    """
    from transferkit.models.loading import load_tokenizer
    from transferkit.train.data import read_split

    if config.augment in IMAGE_ONLY_AUGMENTATIONS or config.image_size is not None:
        raise ConfigError(f"{'augment' if config.image_size is None else 'image_size'}: applies to image data; "
                          f"the data in {dataset.path} is for {dataset.task}")
    if config.preserve_source:
        from transferkit.evaluate.forgetting_lm import DECODER_MODEL_TYPES

        if resolved.model_type in DECODER_MODEL_TYPES:
            raise ConfigError(f"preserve_source: the mitigation keeps an encoder's sentence-similarity skill; "
                              f"{resolved.reference} is a decoder ({resolved.model_type}): use --strategy lora with "
                              "--lora-scale < 1, and `transferkit forgetting` measures its perplexity retention")
    train_split = read_split(dataset, "train")
    validation_split = read_split(dataset, "validation")
    check_long_document_options(config, pairs=train_split.text_pairs is not None, where=str(dataset.path))
    if config.augment == "word_dropout" and not (config.truncation == "head" and config.long_documents == "truncate"):
        raise ConfigError("augment: word_dropout re-tokenizes with head truncation; with --truncation "
                          f"{config.truncation} / --long-documents {config.long_documents} use token_mask or none")
    tokenizer = load_tokenizer(resolved, trust_remote_code=config.trust_remote_code)
    limit = _model_limit(resolved, tokenizer)
    auto = None
    if not isinstance(config.max_length, int):
        lengths = _train_token_lengths(tokenizer, train_split, config.seed)
        auto = auto_max_length(lengths, limit)
        logger.info("max_length auto: %d tokens (p95 of %d training texts = %.0f tokens, model limit %d)", auto,
                    len(lengths), float(np.percentile(lengths, 95)), limit)
    hp = resolve_hyperparameters(config, resolved.entry, limit, auto_length=auto)
    specials = special_token_count(tokenizer)
    window = hp["max_length"] - specials
    stride = config.stride if config.stride is not None else (window // 4 if config.long_documents == "chunk" else 0)
    spec = TextInputs(max_length=hp["max_length"], truncation=config.truncation,
                      long_documents=config.long_documents, stride=stride, aggregation=config.aggregation,
                      special_tokens=specials).check()
    hp.update(max_length_source="auto" if auto is not None else "given", truncation=spec.truncation,
              long_documents=spec.long_documents, stride=spec.stride, aggregation=spec.aggregation,
              chunk_loss=config.chunk_loss)
    return TextSide(config, resolved, tokenizer, hp, train_split, validation_split, spec)




def _train_token_lengths(tokenizer: Any, split: Any, seed: int) -> np.ndarray:
    """Token lengths (special tokens included) of the training texts (a seeded sample of 20,000 at most)."""
    texts, pairs = list(split.texts), split.text_pairs
    rows = auto_sample_rows(len(texts), seed)
    sample = [texts[i] for i in rows]
    sample_pairs = [pairs[i] for i in rows] if pairs is not None else None
    encoded = tokenizer(sample, sample_pairs, truncation=False, verbose=False, return_attention_mask=False,
                        return_token_type_ids=False)
    return np.asarray([len(ids) for ids in encoded["input_ids"]], dtype=np.int64)


def _model_limit(resolved: Any, tokenizer: Any) -> int:
    from transformers import AutoConfig

    from transferkit.train.modeling import model_max_length

    return model_max_length(AutoConfig.from_pretrained(resolved.path), tokenizer)


class TextSide(TrainingSide):
    """Sequence classification of texts (and text pairs)."""

    def __init__(self, config: Any, resolved: Any, tokenizer: Any, hp: dict[str, Any], train_split: Any,
                 validation_split: Any, spec: TextInputs) -> None:
        self.config = config
        self.spec = spec
        self.resolved = resolved
        self.tokenizer = tokenizer
        self.processing_class = tokenizer
        self.hp = hp
        self.train_split = train_split
        self.validation_split = validation_split
        self.pooling = "cls"

    def start_training(self, ctx: Any) -> None:
        """Resolve the pooling (``auto``: mean for sentence embedders, else the model's own)."""
        from transferkit.train.modeling import resolve_pooling

        self.pooling = resolve_pooling(self.config.pooling, self.resolved)

    def identity(self) -> dict[str, Any]:
        """Text adds nothing beyond the shared options and hyperparameters."""
        return {}

    def build_model(self, ctx: Any) -> Any:
        """Load (or randomly initialise, for scratch) the classifier and install mean pooling if chosen."""
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, set_seed

        from transferkit.models.loading import load_sequence_classifier
        from transferkit.train.modeling import MEAN_POOLING_MARKER, add_mean_pooling_layer, reinit_pooler

        config, labels = self.config, ctx.labels
        set_seed(config.seed)
        had_pooling_layer = self.resolved.config.get(MEAN_POOLING_MARKER) is not None
        if config.strategy == "scratch":
            model_config = AutoConfig.from_pretrained(
                self.resolved.path, num_labels=len(labels), id2label=dict(enumerate(labels)),
                label2id={n: i for i, n in enumerate(labels)}, trust_remote_code=config.trust_remote_code,
            )
            if had_pooling_layer:
                # Rebuild the fixed pooling layer rather than randomising it with the trainable layers.
                model_config.num_hidden_layers -= 1
                delattr(model_config, MEAN_POOLING_MARKER)
                had_pooling_layer = False
            try:
                model = AutoModelForSequenceClassification.from_config(
                    model_config, trust_remote_code=config.trust_remote_code
                )
            except Exception as exc:
                raise ModelError(
                    f"{self.resolved.path}: cannot build the architecture ({type(exc).__name__}: {exc})"
                ) from exc
        else:
            model = load_sequence_classifier(self.resolved, labels, allow_pickle=config.allow_pickle,
                                             trust_remote_code=config.trust_remote_code)
        if self.pooling == "mean" and not had_pooling_layer:
            add_mean_pooling_layer(model)
            reinit_pooler(model, config.seed)
        if getattr(model.config, "pad_token_id", None) is None and self.tokenizer.pad_token_id is not None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        torch.manual_seed(config.seed)
        return model

    def freeze(self, model: Any, strategy: str, unfreeze_top_layers: int) -> dict[str, Any]:
        """Freeze by transformer layer (embeddings, layers, pooler, head)."""
        from transferkit.train.modeling import freeze_for_strategy

        return freeze_for_strategy(model, strategy, unfreeze_top_layers)

    def datasets(self, ctx: Any) -> tuple[Any, Any]:
        """Tokenized training (with text augmentation if chosen) and validation datasets."""
        from transferkit.train.data import DocumentWindows, TokenizedDataset

        config, max_length = self.config, self.hp["max_length"]
        spec = None if self.spec.plain else self.spec
        self._validation_windows = TokenizedDataset(self.validation_split, self.tokenizer, max_length,
                                                    text_inputs=spec)
        train = TokenizedDataset(self.train_split, self.tokenizer, max_length, augment=config.augment,
                                 augment_prob=config.augment_prob, seed=config.seed, text_inputs=spec)
        if self.document_aggregation() is not None:
            train = DocumentWindows(train)
        return train, self._validation_windows

    def document_aggregation(self) -> str | None:
        """``--chunk-loss document``: the spec's aggregation, applied to each training document's windows."""
        return self.spec.aggregation if self.config.chunk_loss == "document" else None

    def trainer_metrics(self) -> Any:
        """Chunked documents: every evaluation is scored per document, so checkpoints are selected on them."""
        from transferkit.train.side import compute_metrics
        from transferkit.train.trainer import Reordered

        if not self.spec.chunked:
            return compute_metrics

        def per_document(eval_pred: Any) -> dict[str, float]:
            windows = getattr(self, "_validation_windows", None)
            metrics = compute_metrics(eval_pred)
            if windows is None or len(eval_pred.predictions) != len(windows):  # cached features: windows only
                return metrics
            ordered = Reordered(windows, self.eval_order(windows))  # the order the Trainer evaluated them in
            return self.document_metrics(ordered, eval_pred.predictions, metrics)

        return per_document

    def document_metrics(self, eval_dataset: Any, predictions: Any, metrics: dict[str, float]) -> dict[str, float]:
        """Chunked documents: the windows' logits aggregated per document (window metrics kept as ``window_*``)."""
        from transferkit.data.long_text import aggregate
        from transferkit.train.side import probability_metrics

        if not self.spec.chunked or any(name.startswith("window_") for name in metrics):
            return metrics  # already per document (scored by trainer_metrics)
        dataset = getattr(eval_dataset, "dataset", eval_dataset)
        order = getattr(eval_dataset, "order", range(len(eval_dataset)))
        windows = getattr(dataset, "doc_index", None)
        if windows is None:  # cached features: the text dataset is not at hand; keep the window metrics
            return metrics
        logits = np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions, dtype=np.float64)
        docs = np.asarray([windows[i] for i in order], dtype=np.int64)
        aggregated = aggregate(logits, docs, len(self.validation_split.labels), self.spec.aggregation)
        shifted = np.exp(aggregated - aggregated.max(axis=1, keepdims=True))
        per_document = probability_metrics(shifted / shifted.sum(axis=1, keepdims=True), self.validation_split.labels)
        return {**per_document, **{f"window_{k}": v for k, v in metrics.items()}}

    def supports_feature_cache(self, model: Any) -> bool:
        """Whether the fast path knows where this model's head starts (and scores examples one by one)."""
        from transferkit.train.features import supports_feature_cache

        return self.document_aggregation() is None and supports_feature_cache(model)

    def cached_features(self, model: Any, ctx: Any, datasets: dict[str, Any]) -> tuple[dict[str, Any], str, bool]:
        """Encoder outputs of every split, from the cache or computed once."""
        from transferkit.train.features import cached_features

        return cached_features(model, Path(self.resolved.path), datasets, self.tokenizer, ctx.digests,
                               self.hp["eval_batch_size"])

    def head_model(self, model: Any) -> Any:
        """The pooler and classifier on cached encoder outputs."""
        from transferkit.train.features import build_head_model

        return build_head_model(model)

    def collator(self, device: str) -> Any:
        """Dynamic padding (to multiples of 8 on CUDA, for tensor cores)."""
        from transformers import DataCollatorWithPadding

        from transferkit.train.data import DocumentCollator

        pad = DataCollatorWithPadding(self.tokenizer, pad_to_multiple_of=8 if device == "cuda" else None)
        return DocumentCollator(pad) if self.document_aggregation() is not None else pad

    def eval_order(self, eval_ds: Any) -> list[int]:
        """Validation rows by length: less padding, same metrics."""
        return sorted(range(len(eval_ds)), key=lambda i: eval_ds.lengths[i])

    def train_lengths(self, train_ds: Any) -> list[int] | None:
        """Token lengths of the training rows."""
        return train_ds.lengths

    def static_graph(self, resolved: Any, use_cache: bool) -> bool:
        """BERT and cached-feature heads use every trainable parameter in each forward."""
        return resolved.model_type == "bert" or use_cache

    def off_the_shelf(self, ctx: Any) -> tuple[Any, dict[str, Any]]:
        """Reuse a head whose labels match (rows reordered), or zero-shot by label embeddings.

        Raises:
            ModelError: A head that does not match on a model that is not an embedding model.

        """
        import random

        from transferkit.models.loading import load_sequence_classifier
        from transferkit.train.side import resolve_precision
        from transferkit.train.zeroshot import build_zero_shot_classifier, load_label_descriptions, reorder_head

        config, labels = self.config, ctx.labels
        device, _ = resolve_precision("fp32" if config.precision == "auto" else config.precision)
        permutation = self._head_permutation(labels)
        zero_shot: dict[str, Any] | None = None
        if permutation is not None:
            model = load_sequence_classifier(self.resolved, allow_pickle=config.allow_pickle,
                                             trust_remote_code=config.trust_remote_code)
            reorder_head(model, permutation, labels)
            self.pooling = "model"
            mode = "existing_head"
        else:
            descriptions = load_label_descriptions(config.label_descriptions, labels)
            sample = list(self.train_split.texts)
            random.Random(config.seed).shuffle(sample)
            model, zero_shot = build_zero_shot_classifier(
                self.resolved, self.tokenizer, labels, descriptions=descriptions,
                temperature=config.zero_shot_temperature, sample_texts=sample[:1024],
                check_texts=list(self.validation_split.texts)[:512], max_length=self.hp["max_length"],
            )
            self.pooling = "mean"
            mode = "zero_shot"
        model.eval()
        return model, {"device": device, "zero_shot": zero_shot,
                       "resolved": {"mode": mode, "max_length": self.hp["max_length"],
                                    "model_max_length": self.hp["model_max_length"]}}

    def _head_permutation(self, labels: list[str]) -> list[int] | None:
        """Permutation for a classifier whose head fits the labels; None for an embedding model.

        Raises:
            ModelError: The model has a head that does not match and is not an embedding model.

        """
        from transferkit.train.zeroshot import head_permutation

        head = self.resolved.head_labels
        if head is not None:
            permutation = head_permutation(head, labels)
            if permutation is not None:
                return permutation
        if not self.resolved.is_embedding_model:
            raise ModelError(
                f"{self.resolved.reference}: off_the_shelf needs a head whose labels match labels.json {labels} "
                f"(model head: {head}) or an embedding model for zero-shot; use strategy full or "
                "feature_extraction"
            )
        return None

    def validation_metrics(self, ctx: Any, model_dir: Path, model: Any = None) -> dict[str, float]:
        """Metrics of the saved directory, exactly what later steps load, with the evaluate step's inference.

        ``model`` is not used: the directory is reloaded so that what is measured is what was written.
        """
        from transferkit.evaluate.inference import predict_proba
        from transferkit.models.loading import load_sequence_classifier
        from transferkit.train.side import interactive, probability_metrics

        loaded = load_sequence_classifier(model_dir).eval()
        split = self.validation_split
        probs = predict_proba(loaded, self.tokenizer, split.texts, split.text_pairs,
                              batch_size=self.hp["eval_batch_size"], max_length=self.hp["max_length"],
                              desc="validation", progress=interactive(), text_inputs=self.spec)
        return probability_metrics(probs, split.labels)

    def save(self, directory: Path, model: Any, labels: list[str]) -> None:
        """Weights (safetensors), config with label maps, tokenizer and ``labels.json``."""
        model.config.id2label = dict(enumerate(labels))
        model.config.label2id = {name: i for i, name in enumerate(labels)}
        model.config.num_labels = len(labels)
        model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        write_json(directory / "labels.json", list(labels))
        self.spec.save(directory)
        if not (directory / "model.safetensors").is_file() and \
                not (directory / "model.safetensors.index.json").is_file():
            raise TrainingError(f"{directory}: save_pretrained wrote no safetensors weights")
