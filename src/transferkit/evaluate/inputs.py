"""What the evaluate step predicts on, per task: the split's rows and how a model (or baseline) scores them.

A task's :meth:`~transferkit.tasks.base.Task.evaluation_inputs` returns one of these; the step
(:func:`transferkit.evaluate.evaluation.evaluate_model`) computes the same metrics, gate, ``metrics.json``,
``predictions.parquet`` and report for every task from :class:`Prediction` results.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import EvaluationError, PreparedDataError

logger = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Scores of one model on the split.

    Attributes:
        y_true: Label ids of the rows in the model's label order.
        probs: Class probabilities ``[rows, labels]``.
        labels: The model's label names.
        mode: ``classifier`` or ``zero_shot`` (text baselines without a head).
        inputs: What shaped the model's inputs (``max_length`` or ``image_size``), reported beside the metrics.
    """

    y_true: np.ndarray
    probs: np.ndarray
    labels: list[str]
    mode: str
    inputs: dict[str, Any] = field(default_factory=dict)


class EvalInputs(ABC):
    """Rows of one split of a prepared dataset and the task's way of predicting them."""

    def __init__(self, dataset: Any, split: str) -> None:
        self.dataset = dataset
        self.split = split
        self.where = str(dataset.path / f"{split}.parquet")

    @property
    @abstractmethod
    def n_examples(self) -> int:
        """Rows in the split."""

    @abstractmethod
    def predict(self, ref: str | Path, cfg: Any, *, role: str = "model") -> Prediction:
        """Score the rows with the model (``role='model'``, needs its own head) or a baseline."""

    def mistake_fields(self, row: int) -> dict[str, Any]:
        """Extra fields shown for a mistaken row (its text); none by default."""
        return {}

    def row_columns(self) -> dict[str, Any]:
        """The identifying first columns of ``predictions.parquet`` (pyarrow arrays)."""
        import pyarrow as pa

        return {"row": pa.array(np.arange(self.n_examples), pa.int64())}

    def thumbnails(self, mistakes: list[dict[str, Any]]) -> list[Any] | None:
        """Pictures of the mistaken rows for the report, or None."""
        return None


class TextInputs(EvalInputs):
    """Texts (and optional pairs) predicted by a sequence classifier, or zero-shot for a headless baseline."""

    @classmethod
    def read(cls, dataset: Any, split: str, cfg: Any) -> TextInputs:
        """Read and check the split.

        Raises:
            PreparedDataError: An empty split or a row whose text is not a string.

        """
        inputs = cls(dataset, split)
        texts = dataset.texts(split)
        if not texts:
            raise PreparedDataError(f"{inputs.where}: split is empty, nothing to evaluate")
        if any(not isinstance(t, str) for t in texts):
            row = next(i for i, t in enumerate(texts) if not isinstance(t, str))
            raise PreparedDataError(f"{inputs.where}: row {row}: text is not a string")
        inputs.texts = texts
        inputs.pairs = dataset.text_pairs(split)
        return inputs

    texts: list[str]
    pairs: list[str] | None

    @property
    def n_examples(self) -> int:
        """Texts in the split."""
        return len(self.texts)

    def predict(self, ref: str | Path, cfg: Any, *, role: str = "model") -> Prediction:
        """A classifier's probabilities; a baseline without a head scores zero-shot by label embeddings."""
        from transferkit.evaluate.evaluation import _predict_with

        y_true, probs, labels, mode, inputs = _predict_with(
            ref, self.texts, self.pairs, self.dataset.labels, self.dataset.label_ids(self.split), self.where, cfg,
            require_head=role == "model",
        )
        return Prediction(y_true, probs, labels, mode, inputs)

    def mistake_fields(self, row: int) -> dict[str, Any]:
        """The text (and pair) of the row."""
        return {"text": self.texts[row], "text_pair": self.pairs[row] if self.pairs else None}

    def row_columns(self) -> dict[str, Any]:
        """``text``."""
        import pyarrow as pa

        return {"text": pa.array(self.texts, pa.string())}


class ImageInputs(EvalInputs):
    """Encoded images predicted by an image classifier with its own preprocessing."""

    images: list[bytes]

    @classmethod
    def read(cls, dataset: Any, split: str, cfg: Any) -> ImageInputs:
        """Read and check the split (``max_length`` does not apply: the model's preprocessing sets the size).

        Raises:
            PreparedDataError: An empty split or a row without image bytes.

        """
        inputs = cls(dataset, split)
        images = dataset.images(split)
        if not images:
            raise PreparedDataError(f"{inputs.where}: split is empty, nothing to evaluate")
        if any(not isinstance(b, bytes) or not b for b in images):
            row = next(i for i, b in enumerate(images) if not isinstance(b, bytes) or not b)
            raise PreparedDataError(f"{inputs.where}: row {row}: image is not non-empty encoded bytes")
        if cfg.max_length is not None:
            logger.warning("max_length=%d is ignored for images (the model's preprocessor.json sets the input size)",
                           cfg.max_length)
        inputs.images = images
        return inputs

    @property
    def n_examples(self) -> int:
        """Images in the split."""
        return len(self.images)

    def predict(self, ref: str | Path, cfg: Any, *, role: str = "model") -> Prediction:
        """Load the image classifier and its preprocessing; score every image.

        Raises:
            EvaluationError: A catalog base model or a model without label names of its own.

        """
        from transferkit.evaluate.evaluation import _align_labels, model_labels
        from transferkit.evaluate.image_inference import predict_image_proba
        from transferkit.models.catalog import resolve_model
        from transferkit.models.vision import load_image_classifier, load_image_preprocessor

        resolved = resolve_model(ref, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
        if resolved.entry is not None or resolved.head_labels is None:
            raise EvaluationError(
                f"{role} {ref}: not an image classifier with its own label names (a catalog base model's head "
                "predicts its pre-training classes, and zero-shot baselines exist only for text); pass a "
                "fine-tuned image model directory"
            )
        labels = model_labels(resolved.path, resolved.config)
        y_true = _align_labels(self.dataset.labels, self.dataset.label_ids(self.split), labels, self.where, str(ref))
        preprocessor = load_image_preprocessor(resolved)
        model = load_image_classifier(resolved, allow_pickle=cfg.allow_pickle,
                                      trust_remote_code=cfg.trust_remote_code)
        if int(model.config.num_labels) != len(labels):
            raise EvaluationError(f"{resolved.path}: head has {model.config.num_labels} outputs but {len(labels)} "
                                  "labels")
        probs = predict_image_proba(model, preprocessor, self.images, batch_size=cfg.batch_size, where=self.where,
                                    desc=f"evaluate {Path(str(ref)).name}", progress=cfg.progress)
        return Prediction(y_true, probs, labels, "classifier", {"image_size": int(preprocessor.config.image_size)})

    def thumbnails(self, mistakes: list[dict[str, Any]]) -> list[Any] | None:
        """A thumbnail of each mistaken image (the report's contact sheet)."""
        from transferkit.evaluate.image_inference import thumbnail

        return [thumbnail(self.images[m["row"]]) for m in mistakes]
