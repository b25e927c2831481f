"""The forgetting check for image classifiers: source-task accuracy by head transplant, and per-stage CKA.

Both modes compare the base model and the fine-tuned model on the same source images, preprocessed the way
the base model expects (its catalog entry or ``preprocessor.json``) at the fine-tuned model's input size
(``check_forgetting`` passes it; ``image_size`` overrides it).

``source-task`` (head transplant)
    The base model is an image classifier whose head was trained on the source task (e.g. digits of
    ``builtin:mnist-5k``); the fine-tuned model got a new head for its target task, so its own head
    cannot answer the source task. As in the text source-task mode, which keeps the base model's
    classification head (and pooler) and swaps the encoder underneath, the base model's head is kept and
    the fine-tuned backbone is transplanted under it: every tensor outside the head (``named_stage_groups``
    group ``head``), BatchNorm running statistics included, comes from the fine-tuned model. Source-task
    accuracy of the base model vs this hybrid is what fine-tuning cost the original task. A linear probe
    (re-fitting a head on the fine-tuned features) would instead ask whether the information is still
    *decodable*, a much weaker statement; it is not what the text mode measures, so it is not used here.

``representation-drift``
    Linear CKA (:func:`~transferkit.evaluate.metrics.linear_cka`) between base and fine-tuned features of
    every stage below the head (``stem``, ``stage.N``..., ``top``), each stage output global-average-pooled
    (:func:`~transferkit.evaluate.image_inference.stage_features`). Label-free; the score is the CKA of the
    last stage below the head (1.0 = unchanged).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.errors import ConfigError, EvaluationError, ModelError
from transferkit.evaluate.forgetting import METRICS, Measurement
from transferkit.evaluate.sources import SourceSet

logger = logging.getLogger(__name__)

IMAGE_MODES = ("source-task", "representation-drift")
IMAGE_SOURCES = (
    "a prepared image dataset directory, builtin:digits, builtin:mnist-5k, builtin:fashion-mnist or a .parquet "
    "file with an image column"
)
_GENERIC_LABEL = re.compile(r"^LABEL_\d+$")


def image_head_labels(resolved: Any) -> list[str] | None:
    """Label names of an image model's own head (``labels.json``, else a non-generic ``id2label``)."""
    from transferkit.io import read_json

    labels_file = resolved.path / "labels.json"
    if resolved.entry is None and labels_file.is_file():
        try:
            labels = read_json(labels_file)
        except (OSError, ValueError) as exc:
            raise EvaluationError(f"{labels_file}: not valid JSON ({exc})") from exc
        if isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels):
            return labels
        raise EvaluationError(f"{labels_file}: expected a JSON list of label names")
    labels = resolved.head_labels
    if not labels or all(_GENERIC_LABEL.match(x) for x in labels):
        return None
    return labels


def choose_image_mode(source: SourceSet, mode: str | None, head_labels: list[str] | None, *,
                      catalog_mode: str | None, where: str) -> str:
    """Settle the mode for an image source set.

    Explicit modes are checked against the source; without one, a catalog default applies (when the source
    is the catalog's), else ``source-task`` when the source is labelled and the base head knows every
    source label, else ``representation-drift``.

    Raises:
        EvaluationError: ``similarity`` (text pairs only), or ``source-task`` on unlabelled images.

    """
    if mode == "similarity":
        raise EvaluationError(f"{where}: similarity mode needs text pairs; image models support "
                              f"{' or '.join(IMAGE_MODES)}")
    if mode == "source-task" and source.kind != "labelled":
        raise EvaluationError(f"{where}: source-task mode needs labelled images (image,label), got unlabelled "
                              "probe images")
    if mode is not None:
        return mode
    if catalog_mode in IMAGE_MODES:
        return catalog_mode
    if source.kind == "labelled" and head_labels is not None and set(source.labels) <= set(head_labels):
        return "source-task"
    logger.info("%s: base head does not cover the source labels; using representation-drift", where)
    return "representation-drift"


def _preprocessor(resolved: Any, image_size: int | None) -> Any:
    from transferkit.data.transforms import ImagePreprocessor
    from transferkit.models.vision import load_image_preprocessor

    preprocessor = load_image_preprocessor(resolved)
    if image_size is None or image_size == preprocessor.config.image_size:
        return preprocessor
    config = preprocessor.config
    resize = None
    if config.resize_size is not None:
        resize = max(image_size, round(config.resize_size * image_size / config.image_size))
    return ImagePreprocessor(dataclasses.replace(config, image_size=image_size, resize_size=resize))


def _head_modules(model: Any) -> set[str]:
    from transferkit.models.vision import named_stage_groups

    head = dict(named_stage_groups(model)).get("head", [])
    return {name.rsplit(".", 1)[0] for name in head}


def backbone_state(model: Any) -> dict[str, Any]:
    """The state dict without the classification head (parameters and buffers of the head's modules)."""
    head = _head_modules(model)
    return {key: value for key, value in model.state_dict().items() if key.rsplit(".", 1)[0] not in head}


class ImageForgettingProbe:
    """An image source set bound to a base image classifier: measures any model of that architecture.

    Args:
        base: Base model reference (``efficientnet-lite0`` or an image model directory) or a resolved model.
        source: The loaded image source set.
        mode: ``source-task`` or ``representation-drift``.
        metric: Score name of the mode.
        batch_size: Images per forward pass.
        probe_size: At most this many images (seeded sample) in either mode; image built-ins are large.
        seed: Seed of the sample.
        image_size: Override of the base preprocessing size (None = the base model's).
        allow_pickle: Accept pickle weights.
        trust_remote_code: Accept custom code.
        progress: Show progress bars.

    """

    def __init__(
        self, base: str | Path | Any, source: SourceSet, *, mode: str, metric: str, batch_size: int = 16,
        probe_size: int = 1000, seed: int = 0, image_size: int | None = None, allow_pickle: bool = False,
        trust_remote_code: bool = False, progress: bool = True,
    ) -> None:
        from transferkit.models.catalog import ResolvedModel, resolve_model
        from transferkit.models.vision import load_image_classifier

        if mode not in IMAGE_MODES:
            raise EvaluationError(f"{source.name}: mode {mode!r} is not available for image models; expected "
                                  f"{' or '.join(IMAGE_MODES)}")
        if metric not in METRICS[mode]:
            raise ConfigError(f"metric: {metric!r} does not apply to mode {mode}; expected {METRICS[mode]}")
        self.resolved = base if isinstance(base, ResolvedModel) else resolve_model(
            base, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
        )
        self.mode, self.metric, self.source = mode, metric, source
        self.batch_size, self.progress = batch_size, progress
        self.allow_pickle, self.trust_remote_code = allow_pickle, trust_remote_code
        self.preprocessor = _preprocessor(self.resolved, image_size)
        self.base_model = load_image_classifier(self.resolved, allow_pickle=allow_pickle,
                                                trust_remote_code=trust_remote_code)
        keep = np.arange(len(source.images))
        if len(keep) > probe_size:
            keep = np.sort(np.random.default_rng(seed).choice(len(keep), size=probe_size, replace=False))
        self.images = [source.images[i] for i in keep]
        self.labels = [source.labels[i] for i in keep] if source.kind == "labelled" else []
        self.head_labels: list[str] = []
        self.y_true: np.ndarray | None = None
        if mode == "source-task":
            self._prepare_head()
        self._base_features: tuple[list[str], list[np.ndarray]] | None = None

    @property
    def base_encoder(self) -> Any:
        """The base model (the name :func:`~transferkit.evaluate.forgetting.check_forgetting` uses)."""
        return self.base_model

    def _prepare_head(self) -> None:
        labels = image_head_labels(self.resolved)
        if labels is None:
            raise EvaluationError(
                f"{self.resolved.reference}: base model has no classification head with label names of its own "
                "(a catalog model's head predicts its pre-training classes), so the source-task mode cannot run; "
                "use --mode representation-drift"
            )
        if int(self.base_model.config.num_labels) != len(labels):
            raise EvaluationError(f"{self.resolved.path}: head has {self.base_model.config.num_labels} outputs but "
                                  f"{len(labels)} labels")
        unknown = sorted(set(self.labels) - set(labels))
        if unknown:
            raise EvaluationError(
                f"{self.source.name}: labels {unknown[:10]} are not in the base model's head ({labels[:10]})"
            )
        index = {name: i for i, name in enumerate(labels)}
        self.head_labels = labels
        self.y_true = np.asarray([index[name] for name in self.labels], dtype=int)

    def check_architecture(self, model: Any, where: str) -> None:
        """Raise when ``model``'s backbone (everything but the head) differs from the base model's."""
        if type(model).__name__ != type(self.base_model).__name__:
            raise ModelError(f"{where}: a {type(model).__name__}, but the base model is a "
                             f"{type(self.base_model).__name__}; the forgetting check needs the same architecture")
        base = {k: tuple(v.shape) for k, v in backbone_state(self.base_model).items()}
        other = {k: tuple(v.shape) for k, v in backbone_state(model).items()}
        differing = sorted(k for k in base.keys() | other.keys() if base.get(k) != other.get(k))
        if differing:
            raise ModelError(
                f"{where}: backbone differs from the base model's in {len(differing)} tensor(s) (e.g. "
                f"{differing[0]}: {other.get(differing[0])} vs base {base.get(differing[0])}); the forgetting "
                "check needs the same architecture"
            )

    def _features(self, model: Any, desc: str) -> tuple[list[str], list[np.ndarray]]:
        from transferkit.evaluate.image_inference import stage_features

        return stage_features(model, self.preprocessor, self.images, batch_size=self.batch_size, desc=desc,
                              where=self.source.name, progress=self.progress)

    def base_features(self) -> tuple[list[str], list[np.ndarray]]:
        """Per-stage pooled features of the base model (computed once)."""
        if self._base_features is None:
            self._base_features = self._features(self.base_model, "stage features (base)")
        return self._base_features

    def transplant(self, model: Any) -> Any:
        """A copy of the base model (with its source head) whose backbone tensors come from ``model``."""
        hybrid = copy.deepcopy(self.base_model)
        hybrid.load_state_dict(backbone_state(model), strict=False)
        return hybrid

    def measure(self, model: Any, *, desc: str = "measure") -> Measurement:
        """Score an image classifier of the base architecture on the source images."""
        from transferkit.evaluate.metrics import linear_cka

        if self.mode == "source-task":
            return self._measure_head(model, desc)
        names, base_layers = self.base_features()
        layers = base_layers if model is self.base_model else self._features(model, f"stage features ({desc})")[1]
        per_stage = [linear_cka(b, m) for b, m in zip(base_layers, layers, strict=True)]
        logger.debug("CKA per stage (%s): %s", desc, dict(zip(names, per_stage, strict=True)))
        return Measurement(per_stage[-1], {"cka": per_stage[-1]}, layers=layers)

    def _measure_head(self, model: Any, desc: str) -> Measurement:
        from sklearn import metrics as skm

        from transferkit.evaluate.image_inference import predict_image_proba

        head = self.base_model if model is self.base_model else self.transplant(model)
        probs = predict_image_proba(head, self.preprocessor, self.images, batch_size=self.batch_size, desc=desc,
                                    where=self.source.name, progress=self.progress)
        pred = probs.argmax(axis=1)
        scores = {"accuracy": float(skm.accuracy_score(self.y_true, pred)),
                  "macro_f1": float(skm.f1_score(self.y_true, pred, average="macro", zero_division=0))}
        return Measurement(scores[self.metric], scores)

    def details(self) -> dict[str, Any]:
        """Image-specific entries of ``forgetting.json``'s ``details``."""
        out: dict[str, Any] = {
            "modality": "image",
            "image_size": int(self.preprocessor.config.image_size),
            "n_images": len(self.images),
            "n_items": len(self.images),
            "source_size": self.source.size,
            "source_description": self.source.describe(),
        }
        if self.mode == "representation-drift":
            out["cka_layer_names"] = self.base_features()[0]
        return out
