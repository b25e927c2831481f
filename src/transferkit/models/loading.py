"""Loading Hugging Face models and tokenizers safely (safetensors only unless allowed, no remote code)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transferkit.errors import ModelError
from transferkit.models.catalog import ResolvedModel, resolve_model

logger = logging.getLogger(__name__)


def _as_resolved(model: str | Path | ResolvedModel, **kwargs: Any) -> ResolvedModel:
    return model if isinstance(model, ResolvedModel) else resolve_model(model, **kwargs)


def load_tokenizer(model: str | Path | ResolvedModel, *, trust_remote_code: bool = False) -> Any:
    """Load the tokenizer stored with a model (fast tokenizer when available)."""
    from transformers import AutoTokenizer

    resolved = _as_resolved(model, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, trust_remote_code=trust_remote_code)
    except Exception as exc:
        raise ModelError(f"{resolved.path}: no loadable tokenizer ({type(exc).__name__}: {exc})") from exc
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # GPT-2 style tokenizers have no pad token; batching needs one.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_encoder(
    model: str | Path | ResolvedModel, *, allow_pickle: bool = False, trust_remote_code: bool = False
) -> Any:
    """Load the bare encoder (``AutoModel``) of any model directory, dropping task heads."""
    from transformers import AutoModel

    resolved = _as_resolved(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    try:
        return AutoModel.from_pretrained(
            resolved.path, use_safetensors=not allow_pickle, trust_remote_code=trust_remote_code
        )
    except Exception as exc:
        raise ModelError(f"{resolved.path}: cannot load encoder ({type(exc).__name__}: {exc})") from exc


def load_sequence_classifier(
    model: str | Path | ResolvedModel,
    labels: list[str] | None = None,
    *,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> Any:
    """Load ``AutoModelForSequenceClassification``, creating a new head for ``labels`` when given.

    Args:
        model: Model reference or resolved model.
        labels: Label names in id order; when they differ from the model's own head, a new head of the
            right size is initialised (the usual transfer-learning case).
        allow_pickle: Accept pickle weights.
        trust_remote_code: Accept custom modelling code.

    """
    from transformers import AutoModelForSequenceClassification

    resolved = _as_resolved(model, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {}
    if labels is not None:
        kwargs = {
            "num_labels": len(labels),
            "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)},
        }
        if resolved.head_labels is not None and resolved.head_labels != list(labels):
            kwargs["ignore_mismatched_sizes"] = True
    try:
        classifier = AutoModelForSequenceClassification.from_pretrained(
            resolved.path, use_safetensors=not allow_pickle, trust_remote_code=trust_remote_code, **kwargs
        )
    except Exception as exc:
        raise ModelError(f"{resolved.path}: cannot load classifier ({type(exc).__name__}: {exc})") from exc
    current = resolved.head_labels
    if labels is not None and current is not None and current != list(labels) and len(current) == len(labels):
        # ignore_mismatched_sizes re-initialises only on a size change: a same-size head for other
        # classes would keep the old classes' weights.
        reinit_head(classifier)
    if getattr(classifier.config, "pad_token_id", None) is None and classifier.config.eos_token_id is not None:
        classifier.config.pad_token_id = classifier.config.eos_token_id
    return classifier


def head_modules(model: Any) -> list[tuple[str, Any]]:
    """The linear layers of a transformers model's task head (every ``Linear`` outside the base model)."""
    from torch import nn

    prefix = getattr(model, "base_model_prefix", "")
    return [(name, module) for name, module in model.named_modules()
            if name and not name.startswith(prefix) and isinstance(module, nn.Linear)]


def reinit_head(model: Any) -> None:
    """Start the task head afresh: normal weights (``initializer_range``) and zero biases."""
    from torch import nn

    std = float(getattr(model.config, "initializer_range", 0.02))
    for name, linear in head_modules(model):
        logger.info("Re-initialising head layer %s for the new labels", name)
        nn.init.normal_(linear.weight, std=std)
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)
