"""Quantization-aware fine-tuning for the int4 graph the generative export serves (``--quantization-aware int4``).

The ONNX Runtime GenAI builder's default int4 recipe (``rtn``) stores every decoder matmul and the LM head as
``MatMulNBits``: symmetric 4-bit weights in blocks of 32 along the input dimension, scaled by the block's
largest-magnitude value over -8 (ties go to the negative one), rounded half up; with tied word embeddings the
input embedding is gathered from the same quantized table. On CPU the matmuls quantize their activations to int8
in the same blocks (``accuracy_level`` 4). A model fine-tuned in fp32 loses several ROUGE-L points to that
rounding; trained against it, the int4 export is the model that was trained and validated.

During training every such weight is replaced in the forward pass by its int4 value (activations by their
int8 value); gradients pass straight through the rounding (the straight-through estimator). With LoRA the
rounding applies to the merged weight ``W + BA`` — what the export quantizes — so the adapter learns to land
the merged weights on the int4 grid (the adapters' input dropout has no place in a merged weight and does not
apply). The saved model holds the unrounded weights; the export's quantizer then reproduces the trained values
exactly.

Written by hand: torch's fake-quantization modules are per-tensor or per-channel and round half to even, so
they cannot reproduce MLAS's blocks, scale sign and rounding; a test checks this module bit for bit against
ONNX Runtime's own quantizer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

BLOCK_SIZE = 32


def _blocks(x: Any, block_size: int) -> Any:
    """``x`` in fp32, its last dim zero-padded to whole blocks (as the quantizer pads) and split into them."""
    import torch

    padded = -x.shape[-1] % block_size
    flat = torch.nn.functional.pad(x.float(), (0, padded)) if padded else x.float()
    return flat.reshape(*flat.shape[:-1], -1, block_size)


def _reciprocal(scale: Any) -> Any:
    import torch

    return torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)


def int4_block_values(weight: Any, block_size: int = BLOCK_SIZE) -> Any:
    """The values ONNX Runtime's int4 blockwise quantizer (MLAS, symmetric) keeps of a ``[out, in]`` weight.

    Blocks run along the input dimension. No gradient.
    """
    import torch

    with torch.no_grad():
        rows, cols = weight.shape
        blocks = _blocks(weight, block_size)
        high, low = blocks.amax(-1, keepdim=True), blocks.amin(-1, keepdim=True)
        scale = torch.where(high.abs() > low.abs(), high, low) / -8.0
        codes = torch.clamp(torch.floor(blocks * _reciprocal(scale) + 8.0 + 0.5), 0, 15) - 8.0
        values = (codes * scale).reshape(rows, -1)[:, :cols]
    return values.to(weight.dtype)


def int8_block_activations(x: Any, block_size: int = BLOCK_SIZE) -> Any:
    """Activations as a CPU ``MatMulNBits`` (accuracy level 4) sees them: int8 in blocks along the last dim.

    The gradient passes straight through.
    """
    import torch

    with torch.no_grad():
        blocks = _blocks(x, block_size)
        scale = blocks.abs().amax(-1, keepdim=True) / 127.0
        values = (torch.round(blocks * _reciprocal(scale)) * scale).flatten(-2)[..., :x.shape[-1]].to(x.dtype)
    return x + (values - x).detach()


def _straight_through(weight: Any, block_size: int) -> Any:
    return weight + (int4_block_values(weight, block_size) - weight).detach()


@dataclass
class Int4TrainingEmulation:
    """The forward passes replaced on a model's modules; :meth:`remove` restores them.

    Attributes:
        block_size: Quantization block along the input dimension.
        quantize_activations: Emulate the CPU graph's int8 activations too.
        modules: Names of the modules whose forward is replaced.
        tied_embeddings: The input embedding is patched too (tied to the LM head).
    """

    block_size: int = BLOCK_SIZE
    quantize_activations: bool = True
    modules: list[str] = field(default_factory=list)
    tied_embeddings: bool = False
    _patched: list[Any] = field(default_factory=list, repr=False)

    def describe(self) -> dict[str, Any]:
        """What ``training_summary.json`` records."""
        return {"mode": "int4", "block_size": self.block_size, "quantized_modules": len(self.modules),
                "activations": f"int8, blocks of {self.block_size}" if self.quantize_activations else "fp32",
                "tied_embeddings": self.tied_embeddings}

    def remove(self) -> None:
        """Give every patched module its own forward back and drop the cached int4 weights."""
        for module in self._patched:
            module.__dict__.pop("forward", None)
            module.__dict__.pop("_transferkit_int4_frozen", None)
        self._patched.clear()

    def _frozen_values(self, module: Any, weight: Any) -> Any:
        # A frozen weight's int4 values never change: round once (LoRA's base, the tied LM head).
        cached = module.__dict__.get("_transferkit_int4_frozen")
        if cached is None or cached.device != weight.device:
            cached = int4_block_values(weight, self.block_size)
            module.__dict__["_transferkit_int4_frozen"] = cached
        return cached

    def _weight(self, module: Any, weight: Any) -> Any:
        if weight.requires_grad:
            return _straight_through(weight, self.block_size)
        return self._frozen_values(module, weight)

    def _inputs(self, x: Any) -> Any:
        return int8_block_activations(x, self.block_size) if self.quantize_activations else x

    def patch_linear(self, name: str, module: Any) -> None:
        """``y = x W_q^T + b`` for a plain ``nn.Linear``."""
        import torch.nn.functional as F

        def forward(x: Any) -> Any:
            return F.linear(self._inputs(x), self._weight(module, module.weight), module.bias)

        self._install(name, module, forward)

    def patch_lora(self, name: str, module: Any) -> None:
        """``y = x (W + BA)_q^T + b`` for a peft LoRA linear: the merged weight is what the export quantizes."""
        import torch.nn.functional as F

        base = module.get_base_layer()

        def forward(x: Any, *args: Any, **kwargs: Any) -> Any:
            merged = base.weight
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    merged = merged + module.get_delta_weight(adapter)
            return F.linear(self._inputs(x), _straight_through(merged, self.block_size), base.bias)

        self._install(name, module, forward)

    def patch_tied_embedding(self, name: str, module: Any) -> None:
        """Token lookups from the int4 table the tied LM head holds (the graph's ``GatherBlockQuantized``)."""
        import torch.nn.functional as F

        def forward(ids: Any) -> Any:
            return F.embedding(ids, self._weight(module, module.weight), module.padding_idx, module.max_norm,
                               module.norm_type, module.scale_grad_by_freq, module.sparse)

        self._install(name, module, forward)
        self.tied_embeddings = True

    def _install(self, name: str, module: Any, forward: Any) -> None:
        module.__dict__["forward"] = forward
        self._patched.append(module)
        self.modules.append(name)


def emulate_int4(model: Any, *, block_size: int = BLOCK_SIZE, quantize_activations: bool = True
                 ) -> Int4TrainingEmulation:
    """Make ``model``'s forward pass compute with the int4 graph's weights (and int8 activations).

    Every ``nn.Linear`` (the decoder's projections and the LM head) and every peft LoRA linear is patched; the
    input embedding too when it is tied to the LM head. Call :meth:`Int4TrainingEmulation.remove` before
    merging adapters or saving.

    Args:
        model: A causal language model, with or without injected LoRA adapters.
        block_size: Quantization block along the input dimension (the builder's 32).
        quantize_activations: Emulate the CPU graph's int8 activations.

    Returns:
        The emulation handle.
    """
    import torch
    from peft.tuners.lora import LoraLayer

    emulation = Int4TrainingEmulation(block_size=block_size, quantize_activations=quantize_activations)
    # A LoRA layer's base and its A/B linears are not matmuls of the graph: the merged weight is.
    inside_lora = {id(inner) for m in model.modules() if isinstance(m, LoraLayer) for inner in m.modules()
                   if inner is not m}
    for name, module in model.named_modules():
        if isinstance(module, LoraLayer):
            emulation.patch_lora(name, module)
        elif isinstance(module, torch.nn.Linear) and id(module) not in inside_lora:
            emulation.patch_linear(name, module)
    embeddings, head = model.get_input_embeddings(), model.get_output_embeddings()
    if head is not None and embeddings is not None and embeddings.weight is head.weight:
        embedding_name = next(n for n, m in model.named_modules() if m is embeddings)
        emulation.patch_tied_embedding(embedding_name, embeddings)
    logger.info("Quantization-aware training: %d modules compute with int4 weights (blocks of %d)%s",
                len(emulation.modules), block_size, ", int8 activations" if quantize_activations else "")
    return emulation
