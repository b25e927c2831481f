"""What the fine-tune step does differently for image classification.

The training loop, checkpointing, resume, early stopping, LR groups, L2-SP and DDP are shared with text
(:mod:`transferkit.train.run`). This module supplies the image-specific parts:

- reading a split of PNG bytes and serving ``pixel_values`` with the model's preprocessing (optionally
  with seeded augmentation: random resized crop, flip, colour jitter);
- freezing by network stage (stem, stages, top convolution, head), with BatchNorm statistics and
  stochastic depth of frozen stages pinned to eval mode, and the stage layout used by layer-wise LR decay
  and L2-SP;
- the cached-feature path for a frozen base: the input of the model's classification head is computed
  once per image and the head alone is trained on it;
- saving the model directory (:func:`transferkit.models.vision.write_image_classifier`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transferkit.data.prepared import PreparedDataset
from transferkit.data.transforms import AugmentConfig, ImageAugmenter, ImagePreprocessConfig, ImagePreprocessor
from transferkit.errors import ConfigError, ModelError, PreparedDataError
from transferkit.tasks.image_classification import IMAGE_CLASSIFICATION
from transferkit.train.side import TrainingSide

logger = logging.getLogger(__name__)

IMAGE_AUGMENTATIONS = ("none", "image", "image_no_flip")
TEXT_ONLY_OPTIONS = {"max_length": None, "pooling": "auto", "label_descriptions": None, "truncation": "head",
                     "long_documents": "truncate", "stride": None, "aggregation": "mean"}
MIN_IMAGE_SIZE = 16


@dataclass
class ImageSplit:
    """One split of a prepared image dataset: encoded images and label ids."""

    name: str
    images: list[bytes]
    labels: list[int]


def read_image_split(dataset: PreparedDataset, split: str) -> ImageSplit:
    """Read and check one split: non-empty image bytes, label ids within ``labels.json``, matching names.

    Raises:
        PreparedDataError: Naming the file and the first bad row.

    """
    file = dataset.path / f"{split}.parquet"
    table = dataset.table(split)
    if table.num_rows == 0:
        raise PreparedDataError(f"{file}: split {split!r} is empty; training needs at least one example")
    if "image" not in table.column_names:
        raise PreparedDataError(f"{file}: no 'image' column (expected PNG bytes from `transferkit data prepare`)")
    images = table.column("image").to_pylist()
    raw_labels = table.column("label").to_pylist()
    names = table.column("label_name").to_pylist() if "label_name" in table.column_names else None
    count = len(dataset.labels)
    labels: list[int] = []
    for row, (image, value) in enumerate(zip(images, raw_labels, strict=True)):
        if not isinstance(image, bytes) or not image:
            raise PreparedDataError(f"{file}: row {row}: column 'image' is empty or not bytes")
        if value is None or isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < count:
            raise PreparedDataError(f"{file}: row {row}: label {value!r} is not an id in labels.json (0..{count - 1})")
        if names is not None and names[row] != dataset.labels[value]:
            raise PreparedDataError(f"{file}: row {row}: label_name {names[row]!r} disagrees with "
                                    f"labels.json[{value}] = {dataset.labels[value]!r}")
        labels.append(int(value))
    return ImageSplit(split, images, labels)


class ImageDataset:
    """Map-style dataset of ``{"pixel_values", "labels"}``; augmentation is seeded by (seed, epoch, index).

    Args:
        split: The split to serve.
        preprocessor: The model's preprocessing (evaluation transform).
        augmenter: Training augmentation, or None.

    """

    lengths = None  # images have no length to group batches by

    def __init__(self, split: ImageSplit, preprocessor: ImagePreprocessor,
                 augmenter: ImageAugmenter | None = None) -> None:
        self.split = split
        self.preprocessor = preprocessor
        self.augmenter = augmenter if augmenter is not None and augmenter.enabled else None
        self.augment = "image" if self.augmenter is not None else "none"
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Called by the data loader at each epoch start (augmentation differs per epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        where = f"{self.split.name}.parquet row {index}"
        data = self.split.images[index]
        if self.augmenter is not None:
            pixels = self.preprocessor(data, where, augmenter=self.augmenter,
                                       rng=self.augmenter.rng_for(self.epoch, index))
        else:
            pixels = self.preprocessor(data, where)
        return {"pixel_values": pixels, "labels": self.split.labels[index]}


@dataclass(frozen=True)
class StageLayout:
    """Network stages of an image classifier in the terms of :class:`~transferkit.train.modeling.LayerLayout`.

    The stem counts as ``embeddings``; every stage (and the top convolution, when the model has one) is a
    ``layer`` from the input upwards; the head is ``head``. Layer-wise LR decay and L2-SP therefore work by
    stage exactly as they work by transformer layer.
    """

    names: tuple[str, ...]  # layer names from the input upwards: stage.1 ... top
    kinds: dict[str, tuple[str, int | None]] = field(default_factory=dict, compare=False)

    @property
    def num_layers(self) -> int:
        """Number of stages (plus the top convolution)."""
        return len(self.names)

    def classify(self, name: str) -> tuple[str, int | None]:
        """``("layer", i)``, ``("embeddings", None)`` or ``("head", None)`` for a parameter name.

        Names that strategy lora (peft) gives an adapted module (``...query.base_layer.weight``,
        ``...query.lora_A.default.weight``) take the stage of the module they adapt.
        """
        if name in self.kinds:
            return self.kinds[name]
        module = name.split(".base_layer.", 1)[0].split(".lora_", 1)[0]
        return self.kinds.get(f"{module}.weight", ("head", None)) if module != name else ("head", None)


def stage_layout(model: Any) -> StageLayout:
    """Build the :class:`StageLayout` of a model from :func:`transferkit.models.vision.named_stage_groups`."""
    from transferkit.models.vision import named_stage_groups

    kinds: dict[str, tuple[str, int | None]] = {}
    names: list[str] = []
    for group, params in named_stage_groups(model):
        if group == "head":
            kind: tuple[str, int | None] = ("head", None)
        elif group == "stem":
            kind = ("embeddings", None)
        else:
            kind = ("layer", len(names))
            names.append(group)
        for param in params:
            kinds[param] = kind
    return StageLayout(tuple(names), kinds)


def freeze_image_model(model: Any, strategy: str, unfreeze_top_layers: int = 0) -> dict[str, Any]:
    """Set ``requires_grad`` by stage for a strategy; pin frozen parts (BatchNorm statistics) to eval mode.

    ``feature_extraction`` trains the head and the top ``unfreeze_top_layers`` stages (the top convolution
    counts as a stage); other strategies train everything.

    Returns:
        ``{"layout": StageLayout, "trainable_layers": [...], "base_frozen": bool}``.

    Raises:
        ModelError: ``unfreeze_top_layers`` exceeds the number of stages.

    """
    from transferkit.train.modeling import pin_eval

    layout = stage_layout(model)
    if unfreeze_top_layers > layout.num_layers:
        raise ModelError(f"unfreeze_top_layers: {unfreeze_top_layers} exceeds the model's {layout.num_layers} "
                         f"stages ({', '.join(layout.names)})")
    first_trainable = layout.num_layers - unfreeze_top_layers if strategy == "feature_extraction" else 0
    for name, parameter in model.named_parameters():
        kind, index = layout.classify(name)
        parameter.requires_grad = kind == "head" or (strategy != "feature_extraction") or (
            kind == "layer" and index is not None and index >= first_trainable)
    trainable_layers = list(range(first_trainable, layout.num_layers))
    _set_trainable_batchnorm_momentum(model)
    # A frozen module must not update BatchNorm running statistics or apply dropout/stochastic depth:
    # pin every module whose parameters are all frozen (its parameter-free children follow it).
    for _, module in model.named_modules():
        params = list(module.parameters())
        if params and not any(p.requires_grad for p in params):
            pin_eval(module)
    base_frozen = not any(p.requires_grad for n, p in model.named_parameters() if layout.classify(n)[0] != "head")
    return {"layout": layout, "trainable_layers": trainable_layers, "base_frozen": base_frozen}


FINE_TUNE_BN_MOMENTUM = 0.1


def _set_trainable_batchnorm_momentum(model: Any) -> None:
    """Use PyTorch's default BatchNorm momentum (0.1) in trainable layers.

    TensorFlow-ported CNNs (EfficientNet) keep running statistics with momentum 0.01: after a short
    fine-tune on a new domain the evaluation statistics are still mostly ImageNet's and validation accuracy
    collapses although training loss is low (measured on digits: 36% after 40 steps, see the tests).
    """
    from torch import nn

    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in module.parameters()):
            module.momentum = FINE_TUNE_BN_MOMENTUM


def _head_module_name(model: Any) -> str | None:
    """The single top-level module holding every head parameter (its input is the cached feature)."""
    from transferkit.models.vision import named_stage_groups

    head = dict(named_stage_groups(model)).get("head", [])
    tops = {name.split(".", 1)[0] for name in head}
    if len(tops) != 1:
        return None
    name = tops.pop()
    return name if hasattr(model, name) else None


def supports_image_feature_cache(model: Any) -> bool:
    """Whether the head is one module whose input can be cached (EfficientNet-Lite, ResNet, ViT, ConvNeXt...)."""
    return _head_module_name(model) is not None


def build_image_head_model(model: Any) -> Any:
    """Return an ``nn.Module`` ``features -> head`` that shares the head's parameters with ``model``.

    Raises:
        ModelError: The head is not one module (no cached-feature path).

    """
    import torch.nn as nn
    from transformers.modeling_outputs import ImageClassifierOutput

    name = _head_module_name(model)
    if name is None:
        raise ModelError(f"{type(model).__name__}: no single head module; cannot train on cached features")

    class _Head(nn.Module):
        def __init__(self, head: nn.Module) -> None:
            super().__init__()
            self.head = head

        def forward(self, features: Any, labels: Any = None) -> Any:
            return ImageClassifierOutput(logits=self.head(features))

    return _Head(getattr(model, name))


def compute_head_inputs(model: Any, dataset: ImageDataset, batch_size: int) -> Any:
    """Run the frozen model in eval mode and capture the input of its head for every image."""
    import torch

    from transferkit.evaluate.image_inference import pixel_batches

    head = getattr(model, _head_module_name(model) or "")
    captured: list[Any] = []
    handle = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach().float().cpu()))
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for pixels in pixel_batches(dataset.preprocessor, dataset.split.images, batch_size=batch_size,
                                        device=device, desc=f"features[{dataset.split.name}]",
                                        where=f"{dataset.split.name}.parquet", progress=len(dataset) > batch_size):
                model(pixel_values=pixels)
    finally:
        handle.remove()
        model.train(was_training)
    return torch.cat(captured)


def image_cache_key(model_path: Path, model: Any, digests: dict[str, str], preprocessing: dict[str, Any]) -> str:
    """Key of cached head inputs: base weights and architecture, data files and preprocessing."""
    weights = sorted(p for p in Path(model_path).glob("*") if p.is_file() and p.suffix in (".safetensors", ".pth",
                                                                                            ".pt", ".bin"))
    payload = {
        "model": str(model_path), "class": type(model).__name__,
        "weights": [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in weights],
        "data": digests, "preprocessing": preprocessing, "format": 1, "kind": "image-head-inputs",
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


class ImageSide(TrainingSide):
    """The image-classification side of a fine-tune run (see the module docstring)."""

    def __init__(self, config: Any, resolved: Any, preprocessor: ImagePreprocessor, augmenter: ImageAugmenter,
                 hp: dict[str, Any], train_split: ImageSplit, validation_split: ImageSplit) -> None:
        self.config = config
        self.resolved = resolved
        self.preprocessor = preprocessor
        self.augmenter = augmenter
        self.hp = hp
        self.train_split = train_split
        self.validation_split = validation_split

    @property
    def preprocessing(self) -> dict[str, Any]:  # type: ignore[override]
        """The preprocessing written to ``preprocessor.json``."""
        return self.preprocessor.config.to_dict()

    def identity(self) -> dict[str, Any]:
        """Preprocessing and augmentation: a change refuses the old checkpoints."""
        return {"preprocessing": self.preprocessing, "augment_config": self.augmenter.config.to_dict()}

    def build_model(self, ctx: Any) -> Any:
        """Load the pre-trained classifier with a new head, or build the architecture randomly for scratch."""
        import torch
        from transformers import set_seed

        from transferkit.models.vision import load_image_classifier

        config = self.config
        set_seed(config.seed)
        model = load_image_classifier(self.resolved, ctx.labels, allow_pickle=config.allow_pickle,
                                      trust_remote_code=config.trust_remote_code)
        if config.strategy == "scratch":
            # Same architecture, default initialisation of every layer (convolutions, norms, linears).
            for module in model.modules():
                if module is not model and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        model.train()
        torch.manual_seed(config.seed)
        return model

    def freeze(self, model: Any, strategy: str, unfreeze_top_layers: int) -> dict[str, Any]:
        """Freeze by network stage (see :func:`freeze_image_model`)."""
        return freeze_image_model(model, strategy, unfreeze_top_layers)

    def datasets(self, ctx: Any) -> tuple[ImageDataset, ImageDataset]:
        """Training (augmented if enabled) and validation datasets."""
        return (ImageDataset(self.train_split, self.preprocessor, self.augmenter),
                ImageDataset(self.validation_split, self.preprocessor))

    def supports_feature_cache(self, model: Any) -> bool:
        """Whether the model's classification head can be found."""
        return supports_image_feature_cache(model)

    def cached_features(self, model: Any, ctx: Any, datasets: dict[str, Any]) -> tuple[dict[str, Any], str, bool]:
        """Head inputs of every split, from the cache or computed once."""
        from transferkit.train.features import load_or_compute_features

        batch_size = self.hp["eval_batch_size"]
        key = image_cache_key(Path(self.resolved.path), model, ctx.digests, self.preprocessing)
        return load_or_compute_features(key, {name: len(ds) for name, ds in datasets.items()},
                                        lambda name: compute_head_inputs(model, datasets[name], batch_size))

    def head_model(self, model: Any) -> Any:
        """The classification head alone."""
        return build_image_head_model(model)

    def collator(self, device: str) -> Any:
        """Fixed-size pixel tensors stack as they are."""
        from transformers import default_data_collator

        return default_data_collator

    def off_the_shelf(self, ctx: Any) -> tuple[Any, dict[str, Any]]:
        """Package a classifier whose head already knows the dataset's labels (rows reordered to match).

        Raises:
            ModelError: The head's labels do not match (images have no zero-shot path).

        """
        from transferkit.evaluate.inference import select_device
        from transferkit.models.vision import load_image_classifier
        from transferkit.train.zeroshot import head_permutation, reorder_head

        config = self.config
        model = load_image_classifier(self.resolved, allow_pickle=config.allow_pickle,
                                      trust_remote_code=config.trust_remote_code)
        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        head = [id2label.get(i, str(i)) for i in range(int(model.config.num_labels))]
        permutation = head_permutation(head, ctx.labels)
        if permutation is None:
            shown = head if len(head) <= 10 else [*head[:10], "..."]
            raise ModelError(f"{self.resolved.reference}: off_the_shelf needs a head whose labels match labels.json "
                             f"{ctx.labels} (model head: {shown}); images have no zero-shot path: use "
                             "feature_extraction (seconds on cached features) or full")
        reorder_head(model, permutation, ctx.labels)
        model.eval()
        return model, {"device": select_device().type, "zero_shot": None,
                       "resolved": {"mode": "existing_head", "image_size": self.hp["image_size"]}}

    def validation_metrics(self, ctx: Any, model_dir: Path, model: Any = None) -> dict[str, float]:
        """Metrics of ``model`` (or the classifier saved in ``model_dir``) on the validation images."""
        from transferkit.evaluate.image_inference import predict_image_proba
        from transferkit.evaluate.inference import select_device
        from transferkit.models.vision import load_image_classifier
        from transferkit.train.side import interactive, probability_metrics

        if model is None:
            model = load_image_classifier(model_dir).eval()
        probs = predict_image_proba(model, self.preprocessor, self.validation_split.images,
                                    batch_size=self.hp["eval_batch_size"], device=select_device(),
                                    desc="validation", where="validation.parquet", progress=interactive())
        return probability_metrics(probs, self.validation_split.labels)

    def save(self, directory: Path, model: Any, labels: list[str]) -> None:
        """Write weights, config, ``preprocessor.json`` and ``labels.json`` into ``directory``."""
        from transferkit.models.vision import write_image_classifier

        write_image_classifier(model, directory, labels, self.preprocessor.config)


def _augment_config(kind: str, seed: int) -> AugmentConfig:
    if kind == "image":
        return AugmentConfig(enabled=True, seed=seed)
    if kind == "image_no_flip":
        return AugmentConfig.for_digits(seed)
    return AugmentConfig()


def image_side_for(config: Any, dataset: PreparedDataset, resolved: Any) -> ImageSide:
    """Check the options that apply to images, read the splits and build the :class:`ImageSide` of a run.

    Raises:
        ConfigError: A text-only option, an unknown image augmentation, or an invalid image size.
        PreparedDataError: A split with bad rows.

    """
    from transferkit.models.vision import load_image_preprocessor
    from transferkit.train.side import resolve_hyperparameters

    for name, default in TEXT_ONLY_OPTIONS.items():
        if getattr(config, name) != default:
            raise ConfigError(f"{name}: applies to text models only; the data is for {IMAGE_CLASSIFICATION}")
    if config.augment not in IMAGE_AUGMENTATIONS:
        raise ConfigError(f"augment: {config.augment!r} is a text augmentation; for images use one of "
                          f"{', '.join(IMAGE_AUGMENTATIONS)}")
    if config.preserve_source:
        raise ConfigError("preserve_source: the forgetting mitigation needs a text source task; for images use "
                          "--l2sp or --llrd to limit drift")
    if config.gradient_checkpointing:
        raise ConfigError("gradient_checkpointing: not supported for image models (CNN activations are small)")
    if config.strategy == "lora":
        from transferkit.train.lora import DEFAULT_TARGETS

        if resolved.model_type not in DEFAULT_TARGETS:
            kind = resolved.model_type if resolved.model_type != "unknown" else resolved.reference
            raise ConfigError(f"strategy: lora adapts the attention projections of transformer bases (ViT); "
                              f"{kind} is a CNN; use strategy full or feature_extraction")
    preprocessor = load_image_preprocessor(resolved)
    if config.image_size is not None:
        base = preprocessor.config
        if config.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(f"image_size: {config.image_size} is below the minimum of {MIN_IMAGE_SIZE} pixels")
        resize = None
        if base.resize_size is not None:
            resize = max(config.image_size, round(config.image_size * base.resize_size / base.image_size))
        data = base.to_dict()
        data.update(image_size=int(config.image_size), resize_size=resize)
        preprocessor = ImagePreprocessor(ImagePreprocessConfig.from_dict(data))
    augmenter = ImageAugmenter(_augment_config(config.augment, config.seed))
    train_split = read_image_split(dataset, "train")
    validation_split = read_image_split(dataset, "validation")
    hp = resolve_hyperparameters(config, resolved.entry, model_limit=1 << 30)
    for key in ("max_length", "model_max_length"):
        hp.pop(key)
    hp["image_size"] = preprocessor.config.image_size
    return ImageSide(config, resolved, preprocessor, augmenter, hp, train_split, validation_split)
