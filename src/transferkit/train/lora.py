"""Strategy ``lora``: low-rank adapters (peft) on a frozen base, a fully trained new head, a merged output.

A language model (the generative tasks) has no new head: its pre-trained LM head stays frozen with the base
(``train_head=False``) and the adapter alone is trained.

The adapters are injected in place with :func:`peft.inject_adapter_in_model` rather than wrapping the model
in a ``PeftModel``: parameter names keep their ``<base>.<layers>.<i>...`` shape, so layer discovery, LR groups,
checkpoints and resume work exactly as for the other strategies. At the end the adapter is exported (peft's
file format, for audit and multi-adapter serving) and merged into the base weights, optionally multiplied by
``lora_scale`` (LoRA's own preserve-source knob), so the saved model is a plain transformers model.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError, ModelError

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
ALL_LINEAR = "all-linear"
# Default targets per ``config.model_type``: attention query/value for BERT-style encoders (the LoRA paper's
# choice), every attention projection for Llama-style decoders.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "vit": ["query", "value"],
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "mistral": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "gpt2": ["c_attn"],
}
_RENAMED = {"query": "q_proj", "key": "k_proj", "value": "v_proj"}


def default_targets(model: Any) -> list[str]:
    """The default LoRA target module names of a transformers model.

    Raises:
        ModelError: The model is not a transformer with attention projections (a CNN, for example).

    """
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise ModelError(f"strategy lora: {type(model).__name__} is not a transformer (no attention projections "
                         "to adapt, e.g. a CNN); use strategy full or feature_extraction")
    if model_type not in DEFAULT_TARGETS:
        raise ConfigError(f"lora_target: no default target modules for model type {model_type!r}; pass "
                          f"--lora-target names or {ALL_LINEAR}")
    defaults = list(DEFAULT_TARGETS[model_type])
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if not present & set(defaults):
        # transformers 5 renamed some architectures' projections (ViT: query/value -> q_proj/v_proj).
        defaults = [_RENAMED.get(t, t) for t in defaults]
    return defaults


def _adaptable_linears(model: Any, classify: Any, excluded_prefix: str | None) -> list[str]:
    """Names of the base model's linear layers (head and the fixed pooling layer excluded)."""
    from torch import nn

    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or classify(name + ".weight")[0] == "head":
            continue
        if excluded_prefix and name.startswith(excluded_prefix):
            continue
        names.append(name)
    return names


def resolve_target_modules(model: Any, requested: list[str] | None, classify: Any,
                           excluded_prefix: str | None = None) -> list[str]:
    """Full module names to adapt: the requested names (or defaults) matched against the base's linear layers.

    Raises:
        ConfigError: A requested name matches no linear layer of the base (the message names those that exist).
        ModelError: No default exists because the model has no attention projections.

    """
    candidates = _adaptable_linears(model, classify, excluded_prefix)
    if not candidates:
        raise ModelError(f"strategy lora: {type(model).__name__} has no linear layers to adapt; use strategy "
                         "full or feature_extraction")
    targets = requested if requested is not None else default_targets(model)
    if targets == [ALL_LINEAR]:
        return candidates
    selected: list[str] = []
    for target in targets:
        matched = [n for n in candidates if n == target or n.endswith("." + target)]
        if not matched:
            available = sorted({n.rsplit(".", 1)[-1] for n in candidates})
            raise ConfigError(f"lora_target: no linear module {target!r} in {type(model).__name__}; its modules "
                              f"are {', '.join(available)} (or {ALL_LINEAR})")
        selected += [n for n in matched if n not in selected]
    return selected


def apply_lora(model: Any, config: Any, layout: Any, *, train_head: bool = True,
               task_type: str | None = None) -> dict[str, Any]:
    """Inject LoRA adapters into ``model`` in place; train only them and (``train_head``) the head.

    Args:
        model: The classifier (new head already in place), or a language model.
        config: The :class:`~transferkit.train.config.TrainConfig` (``lora_*`` options).
        layout: The model's layer layout (``classify`` and the fixed pooling layer).
        train_head: Train the parameters ``layout.classify`` calls ``head`` (a new classification head); False
            keeps a pre-trained output layer (an LM head, tied to the embeddings in most decoders) frozen.
        task_type: peft ``task_type`` recorded in the adapter config (``CAUSAL_LM``), or None.

    Returns:
        What the summary records: targets, rank, alpha, dropout, DoRA, adapter parameter count.

    """
    from peft import LoraConfig, inject_adapter_in_model

    pooling_layer = getattr(layout, "pooling_layer", None)  # image stage layouts have no pooling layer
    pooling_prefix = None if pooling_layer is None else f"{layout.layers_prefix}.{pooling_layer}."
    targets = resolve_target_modules(model, config.lora_targets, layout.classify, pooling_prefix)
    lora_config = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                             target_modules=targets, use_dora=config.dora, bias="none", task_type=task_type)
    inject_adapter_in_model(lora_config, model)
    adapter_params = 0
    for name, parameter in model.named_parameters():
        is_adapter = "lora_" in name
        parameter.requires_grad = is_adapter or (train_head and layout.classify(name)[0] == "head")
        adapter_params += parameter.numel() if is_adapter else 0
    model._transferkit_lora_config = lora_config
    model._transferkit_lora_trains_head = train_head
    kinds = sorted({t.rsplit(".", 1)[-1] for t in targets})
    logger.info("LoRA r=%d alpha=%g on %d modules (%s): %d adapter parameters", config.lora_rank,
                config.lora_alpha, len(targets), ", ".join(kinds), adapter_params)
    return {"rank": config.lora_rank, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
            "dora": config.dora, "target_modules": kinds, "adapted_modules": len(targets),
            "adapter_parameters": adapter_params, "scale": config.lora_scale}


def adapter_state(model: Any, classify: Any) -> tuple[dict[str, Any], Any]:
    """The adapter and head weights in peft's file layout, and the ``LoraConfig`` to save beside them.

    Keys are those of a ``PeftModel`` (``base_model.model.<name>``); the fully trained head is saved as
    ``modules_to_save`` so ``PeftModel.from_pretrained`` restores it. A frozen pre-trained head (a language
    model's) is not saved: the adapter applies to the base model as published.
    """
    from peft import get_peft_model_state_dict

    lora_config = model._transferkit_lora_config
    state = {f"base_model.model.{k}": v.detach().to("cpu").contiguous().clone()
             for k, v in get_peft_model_state_dict(model, adapter_name="default").items()}
    head: set[str] = set()
    if not getattr(model, "_transferkit_lora_trains_head", True):
        lora_config.modules_to_save = None
        return state, lora_config
    for name, parameter in model.named_parameters():
        if "lora_" not in name and classify(name)[0] == "head":
            head.add(name.rsplit(".", 1)[0])
            state["base_model.model." + name] = parameter.detach().to("cpu").contiguous().clone()
    lora_config.modules_to_save = sorted(head)
    return state, lora_config


def merge_lora(model: Any, scale: float = 1.0) -> Any:
    """Merge every adapter into its base layer (update times ``scale``) and remove the adapter modules."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in layers:
        if scale != 1.0:
            module.scale_layer(scale)
        module.merge(safe_merge=True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, module.get_base_layer())
    for parameter in model.parameters():
        parameter.requires_grad = False
    for attr in ("_transferkit_lora_config", "_transferkit_lora_trains_head"):
        if hasattr(model, attr):
            delattr(model, attr)
    for attr in ("peft_config", "_hf_peft_config_loaded"):
        if attr in model.__dict__:
            delattr(model, attr)
    return model


def save_adapter(directory: Path, state: dict[str, Any], lora_config: Any, base_model: str, scale: float) -> None:
    """Write ``adapter_model.safetensors`` + ``adapter_config.json`` (peft's format) into ``directory``.

    ``lora_alpha`` is saved multiplied by ``scale`` so that the adapter reproduces the merged model.
    """
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    lora_config.lora_alpha = lora_config.lora_alpha * scale
    lora_config.base_model_name_or_path = base_model
    lora_config.save_pretrained(str(directory))
    save_file(state, str(directory / "adapter_model.safetensors"))


def check_quantize_base(quantize_base: str, device: str) -> None:
    """QLoRA loads the frozen base through bitsandbytes, which needs CUDA.

    Raises:
        ConfigError: ``quantize_base`` was asked for on a machine without CUDA.

    """
    if quantize_base != "none" and device != "cuda":
        raise ConfigError(f"quantize_base: {quantize_base} (QLoRA) needs a CUDA GPU; this machine trains on "
                          f"{device}; use --quantize-base none")


def quantization_config(quantize_base: str) -> Any:
    """The transformers ``BitsAndBytesConfig`` for ``4bit`` (NF4, bf16 compute) or ``8bit``, None for ``none``."""
    if quantize_base == "none":
        return None
    import torch
    from transformers import BitsAndBytesConfig

    if quantize_base == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)
    return BitsAndBytesConfig(load_in_8bit=True)
