"""ExportConfig validation and the CPU graph rewrite on a hand-built graph (no model loading)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from transferkit.errors import ConfigError
from transferkit.export import ExportConfig
from transferkit.export.onnx_export import keep_residual_adds_unfused


@pytest.mark.parametrize(("field", "value", "message"), [
    ("target", "tpu", "target: 'tpu' is not one of cpu, gpu"),
    ("on_drop", "warn", "on_drop: 'warn' is not one of fallback, fail"),
    ("opset", 12, "opset: 12 is not supported"),
    ("atol", 0.0, "atol: 0.0 must be in (0, 1]"),
    ("max_drop", -1.0, "max_drop: -1.0 must be in [0, 100]"),
    ("max_length", 1, "max_length: 1 must be in [2, 8192]"),
    ("calibration_size", 0, "calibration_size: 0 must be >= 1"),
    ("calibration_method", "kl", "calibration_method: 'kl' is not one of minmax, percentile, entropy"),
    ("threads", 0, "threads: 0 must be >= 1"),
    ("latency_runs", -1, "latency_runs: -1 must be >= 0"),
    ("gpu_prefer", "int8", "gpu_prefer: 'int8' is not one of fp16, qdq"),
])
def test_invalid_values_name_the_field(tmp_path: Path, field: str, value, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        ExportConfig(tmp_path / "m", tmp_path / "d", tmp_path / "o", **{field: value})
    assert str(info.value).startswith(message)


def test_out_dir_must_not_be_an_input(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="out_dir: .* must differ from model_dir and data_dir"):
        ExportConfig(tmp_path / "m", tmp_path / "d", tmp_path / "m")


def test_defaults(tmp_path: Path) -> None:
    config = ExportConfig(str(tmp_path / "m"), str(tmp_path / "d"), str(tmp_path / "o"))
    assert isinstance(config.model_dir, Path) and config.atol == 1e-4 and config.max_drop == 0.5
    assert (config.target, config.on_drop, config.opset) == ("cpu", "fallback", 17)
    assert config.resolved_threads >= 1 and config.to_dict()["out_dir"] == str(tmp_path / "o")


def _residual_graph() -> onnx.ModelProto:
    hidden = 8
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", "s", hidden]) for n in ("x", "r")]
    inits = [onnx.numpy_helper.from_array(np.ones(hidden, np.float32), "gamma"),
             onnx.numpy_helper.from_array(np.zeros(hidden, np.float32), "beta"),
             onnx.numpy_helper.from_array(np.full(hidden, 0.5, np.float32), "bias")]
    nodes = [
        helper.make_node("Add", ["x", "bias"], ["xb"], name="bias_add"),  # bias add: must stay an Add
        helper.make_node("Add", ["xb", "r"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "gamma", "beta"], ["y"], axis=-1, epsilon=1e-12),
    ]
    graph = helper.make_graph(nodes, "g", inputs,
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "s", hidden])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_residual_add_rewrite_keeps_values_and_blocks_skip_layernorm_fusion(tmp_path: Path) -> None:
    model = _residual_graph()
    feeds = {"x": np.random.default_rng(0).normal(size=(2, 3, 8)).astype(np.float32),
             "r": np.random.default_rng(1).normal(size=(2, 3, 8)).astype(np.float32)}

    def optimized_ops(proto: onnx.ModelProto, name: str) -> tuple[list[str], np.ndarray]:
        path = tmp_path / f"{name}.onnx"
        onnx.save(proto, str(path))
        options = ort.SessionOptions()
        options.optimized_model_filepath = str(tmp_path / f"{name}.opt.onnx")
        out = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node], out

    before_ops, before = optimized_ops(model, "before")
    assert "SkipLayerNormalization" in before_ops  # what ORT does to the plain graph
    assert keep_residual_adds_unfused(model) == 1
    assert [n.op_type for n in model.graph.node] == ["Add", "Sum", "LayerNormalization"]
    after_ops, after = optimized_ops(model, "after")
    assert "SkipLayerNormalization" not in after_ops
    np.testing.assert_allclose(after, before, atol=1e-6)
