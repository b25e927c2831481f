"""KFP component: export to ONNX behind a parity gate and quantize behind an accuracy gate."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from transferkit.images import RUNTIME_IMAGE


@dsl.component(base_image=RUNTIME_IMAGE, install_kfp_package=False)
def onnx_quantize(
    model: Input[Model],
    dataset: Input[Dataset],
    onnx_model: Output[Model],
    metrics: Output[Metrics],
    report: Output[HTML],
    target: str = "cpu",
    atol: float = 1e-4,
    max_drop: float = 0.5,
    on_drop: str = "fallback",
    opset: int = 0,
    cpu_isa: str = "portable",
    max_eval_samples: int = 0,
    int4_recipe: str = "rtn",
) -> NamedTuple("ExportOutputs", [("passed", bool), ("recommended_variant", str)]):
    """Export ``model`` to ONNX (parity-checked) and keep the quantized variant that holds its accuracy.

    A parity failure, or an accuracy drop with ``on_drop="fail"``, fails the task.

    Args:
        target: ``cpu`` (dynamic int8) or ``gpu`` (static QDQ int8 + fp16, for TensorRT).
        atol: Largest allowed |PyTorch - ONNX Runtime| logit difference.
        max_drop: Largest allowed accuracy drop of a quantized variant, in points.
        on_drop: ``fallback`` to fp32 or ``fail``.
        opset: ONNX opset (0 = the exporter's default).
        cpu_isa: CPU int8 recipe: ``portable`` (any CPU), ``vnni`` (serve on VNNI nodes) or ``native``.
        max_eval_samples: Validation items the gates use (generative models: prompts; 0 = the default).
        int4_recipe: Generative models: ``rtn``, ``rtn-int8-head`` or ``k-quant-mixed`` int4 weights.

    Returns:
        Whether the export gates passed, and the variant to deploy.
    """
    import json
    import shutil
    from collections import namedtuple
    from pathlib import Path

    from transferkit.export import ExportConfig, export_model
    from transferkit.options import from_kfp_parameters

    options = from_kfp_parameters(ExportConfig, {"target": target, "atol": atol, "max_drop": max_drop,
                                                 "on_drop": on_drop, "opset": opset, "cpu_isa": cpu_isa,
                                                 "max_eval_samples": max_eval_samples,
                                                 "int4_recipe": int4_recipe})
    result = export_model(ExportConfig(
        model_dir=Path(model.path), data_dir=Path(dataset.path), out_dir=Path(onnx_model.path), **options,
    ))
    for name, value in result.scalar_metrics().items():
        metrics.log_metric(name, value)
    Path(metrics.path).write_text(json.dumps(metrics.metadata, indent=2), encoding="utf-8")
    shutil.copyfile(result.report_html, report.path)
    onnx_model.metadata.update({"framework": "onnx", "recommended_variant": result.recommended_variant})
    # Reaching this line means the parity gate held and the accuracy policy produced a deployable variant.
    return namedtuple("ExportOutputs", ["passed", "recommended_variant"])(True, result.recommended_variant)
