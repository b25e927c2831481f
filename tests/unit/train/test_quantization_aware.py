"""Quantization-aware training (--quantization-aware int4): the emulation is ONNX Runtime's int4 graph, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.generative import aclsum_pairs, tiny_llama
from transferkit.errors import ConfigError


def _ort_int4(weight: np.ndarray, block_size: int = 32) -> np.ndarray:
    """What ONNX Runtime's own int4 quantizer (MLAS, symmetric) keeps of a torch ``[out, in]`` weight."""
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits

    rows, cols = weight.shape  # the ONNX MatMul weight is [in, out] = weight.T
    blocks = -(-cols // block_size)
    packed = np.zeros((rows, blocks, block_size // 2), dtype=np.uint8)
    scales = np.zeros(rows * blocks, dtype=np.float32)
    zero_points = np.zeros(rows * ((blocks + 1) // 2), dtype=np.uint8)
    padded = np.zeros((blocks * block_size, rows), dtype=np.float32)
    padded[:cols] = weight.T
    quantize_matmul_4bits(packed, padded, scales, zero_points, block_size, rows, blocks * block_size, True)
    return _dequantize(packed, scales.reshape(rows, blocks))[:, :cols]


def _dequantize(packed: np.ndarray, scales: np.ndarray) -> np.ndarray:
    codes = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[0], scales.shape[1], -1)
    return ((codes.astype(np.float32) - 8) * scales[..., None]).reshape(packed.shape[0], -1)


def test_int4_values_are_onnx_runtimes_bit_for_bit_on_ties_half_steps_and_padding() -> None:
    import torch

    from transferkit.train.quantization_aware import int4_block_values

    rng = np.random.default_rng(0)
    weight = rng.standard_normal((48, 100)).astype(np.float32)  # 100 inputs: the last block is padded
    weight[0, :32] = np.linspace(-1, 1, 32)  # +1 and -1 tie for the largest magnitude
    weight[1, :32] = 0.0  # an all-zero block (scale 0)
    weight[2, :32] = np.concatenate([[-8.0], np.arange(-7.5, 8.0, 0.5)[:31]])  # scale 1: exact half steps
    ours = int4_block_values(torch.from_numpy(weight)).numpy()
    theirs = _ort_int4(weight)
    assert np.array_equal(ours, theirs), f"{int((ours != theirs).sum())} of {ours.size} values differ"
    assert len(np.unique(ours[3, :32])) <= 16  # 4 bits per block


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("qat") / "llama")


@pytest.fixture(scope="module")
def pairs(llama: Path) -> Path:
    return aclsum_pairs(llama, llama.parent / "pairs", rows=12)


def _with_lora(model_dir: Path):  # a transformers model with peft adapters
    import torch
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    torch.manual_seed(1)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad = "lora_" in name
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.5)  # a non-zero update, so merged != base
    return model


def test_lora_training_sees_the_rounded_merged_weights_and_remove_restores_the_model(llama: Path) -> None:
    import torch

    from transferkit.train.lora import merge_lora
    from transferkit.train.quantization_aware import emulate_int4, int4_block_values

    model = _with_lora(llama)
    ids = torch.tensor([[5, 17, 230, 9, 44, 3]])
    with torch.no_grad():
        before = model(input_ids=ids).logits
    emulation = emulate_int4(model, quantize_activations=False)
    # 2 layers x (q, k, v, o, gate, up, down) + the LM head + the tied embedding; never a LoRA A/B linear.
    assert len(emulation.modules) == 16 and emulation.tied_embeddings
    assert not any("lora_" in name or "base_layer" in name for name in emulation.modules)
    emulated = model(input_ids=ids).logits
    emulated[0, -1].logsumexp(-1).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values())

    reference = _with_lora(llama)
    merge_lora(reference)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(int4_block_values(module.weight))  # the tied embedding follows the head
        rounded = reference(input_ids=ids).logits
    assert torch.allclose(emulated.detach(), rounded, atol=1e-5), float((emulated.detach() - rounded).abs().max())
    assert (emulated.detach() - before).abs().max() > 1e-3  # the rounding changes the logits

    emulation.remove()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)


def test_full_fine_tuning_rounds_every_trainable_weight_with_straight_through_gradients(llama: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from transferkit.train.quantization_aware import emulate_int4, int4_block_values

    ids = torch.tensor([[5, 17, 230, 9, 44, 3]])
    model = AutoModelForCausalLM.from_pretrained(llama)
    reference = AutoModelForCausalLM.from_pretrained(llama)
    with torch.no_grad():
        for module in reference.modules():
            if isinstance(module, torch.nn.Linear):
                module.weight.copy_(int4_block_values(module.weight))
    emulate_int4(model, quantize_activations=False)
    model(input_ids=ids).logits[0, -1].logsumexp(-1).backward()
    reference(input_ids=ids).logits[0, -1].logsumexp(-1).backward()
    # The gradient of the rounded weight is applied to the unrounded one (straight-through).
    for (name, parameter), expected in zip(model.named_parameters(), reference.parameters(), strict=True):
        assert torch.allclose(parameter.grad, expected.grad, atol=1e-6), name


def test_trained_int4_export_holds_exactly_the_trained_weights(llama: Path, pairs: Path, tmp_path: Path) -> None:
    """train --strategy lora --quantization-aware int4, then the real int4 export: every int4 weight of the graph
    is the trained model's rounded weight, and its logits are the emulated model's, not the fp32 model's."""
    import onnx
    import onnxruntime as ort
    import torch
    from onnx import numpy_helper
    from transformers import AutoModelForCausalLM

    from transferkit.export import export_model
    from transferkit.export.config import ExportConfig
    from transferkit.train.config import TrainConfig
    from transferkit.train.quantization_aware import emulate_int4, int4_block_values
    from transferkit.train.run import run_training

    out = tmp_path / "model"
    run_training(TrainConfig(data_dir=pairs, model=str(llama), out_dir=out, strategy="lora", max_steps=2,
                             batch_size=4, max_length=96, learning_rate=3e-3, lora_rank=4,
                             quantization_aware="int4"))
    recorded = json.loads((out / "training_summary.json").read_text())["resolved"]["quantization_aware"]
    assert recorded == {"mode": "int4", "block_size": 32, "quantized_modules": 16,
                        "activations": "int8, blocks of 32", "tied_embeddings": True}
    export_model(ExportConfig(model_dir=out, data_dir=pairs, out_dir=tmp_path / "onnx", threads=1,
                              max_eval_samples=2, max_drop=100.0))
    assert json.loads((tmp_path / "onnx" / "generation_spec.json").read_text())["quantization_aware"] == "int4"

    graph = onnx.load(str(tmp_path / "onnx" / "int4" / "model.onnx"))
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.graph.initializer}
    trained = AutoModelForCausalLM.from_pretrained(out).eval()
    weights = {name: module.weight.detach() for name, module in trained.named_modules()
               if isinstance(module, torch.nn.Linear)}
    checked = 0
    for node in graph.graph.node:
        if node.op_type != "MatMulNBits":
            continue
        packed = initializers[node.input[1]]
        graph_values = _dequantize(packed, initializers[node.input[2]].reshape(packed.shape[0], -1))
        parts = node.name.strip("/").split("/")  # /model/layers.0/attn/qkv_proj/MatMul_Q4, /lm_head/MatMul_Q4
        if parts[0] == "lm_head":
            expected = weights["lm_head"]
        else:
            prefix = f"model.{parts[1]}.{'self_attn' if parts[2] == 'attn' else 'mlp'}."
            projections = ("q_proj", "k_proj", "v_proj") if parts[3] == "qkv_proj" else (parts[3],)
            expected = torch.cat([weights[prefix + projection] for projection in projections])
        assert np.array_equal(graph_values[:, :expected.shape[1]], int4_block_values(expected).numpy()), node.name
        checked += 1
    assert checked == 2 * 5 + 1  # qkv, o, gate, up, down per layer, and the LM head

    ids = np.array([[5, 17, 230, 9, 44, 3]], dtype=np.int64)
    session = ort.InferenceSession(str(tmp_path / "onnx" / "int4" / "model.onnx"), providers=["CPUExecutionProvider"])
    feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    for value in session.get_inputs():
        if value.name == "position_ids":
            feeds[value.name] = np.arange(ids.shape[1], dtype=np.int64)[None]
        elif value.name.startswith("past_key_values"):
            width = trained.config.hidden_size // trained.config.num_attention_heads
            feeds[value.name] = np.zeros((1, value.shape[1], 0, width), dtype=np.float32)
    served = session.run(["logits"], feeds)[0][0, -1]
    with torch.no_grad():
        fp32 = trained(input_ids=torch.from_numpy(ids)).logits[0, -1].numpy()
        emulate_int4(trained)
        emulated = trained(input_ids=torch.from_numpy(ids)).logits[0, -1].numpy()
    emulation_error, fp32_error = np.abs(served - emulated).max(), np.abs(served - fp32).max()
    assert emulation_error < fp32_error / 5, (emulation_error, fp32_error)


@pytest.mark.parametrize(("options", "field"), [
    ({"strategy": "feature_extraction", "quantization_aware": "int4"}, "quantization_aware"),
    ({"strategy": "lora", "quantization_aware": "int4", "dora": True}, "dora"),
    ({"strategy": "lora", "quantization_aware": "int4", "lora_scale": 0.5}, "lora_scale"),
    ({"strategy": "full", "quantization_aware": "int8"}, "quantization_aware"),
])
def test_bad_quantization_aware_options_name_the_field(tmp_path: Path, options: dict, field: str) -> None:
    from transferkit.train.config import TrainConfig

    with pytest.raises(ConfigError, match=rf"^{field}: "):
        TrainConfig(data_dir=tmp_path / "data", model="minilm-l6", out_dir=tmp_path / "out", **options)


def test_a_strategy_sweep_passes_quantization_aware_to_lora_and_full_only(llama: Path, pairs: Path,
                                                                         tmp_path: Path) -> None:
    from transferkit.train.step import config_from_parameters

    for strategy, expected in (("lora", "int4"), ("full", "int4"), ("feature_extraction", "none")):
        config = config_from_parameters(pairs, tmp_path / strategy, {"base_model": str(llama), "strategy": strategy,
                                                                    "quantization_aware": "int4"})
        assert config.quantization_aware == expected, strategy


def test_a_task_without_an_int4_graph_refuses_quantization_aware_training() -> None:
    from transferkit.train.side import TrainingSide

    with pytest.raises(ConfigError, match="^quantization_aware: int4 emulates the int4 graph of generative"):
        TrainingSide.quantization_aware(None, None, "int4")  # type: ignore[arg-type]
