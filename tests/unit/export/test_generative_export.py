"""Generative export through the task registry: ONNX Runtime GenAI fp32 + int4, parity and ROUGE-L gates.

A tiny random Llama fine-tuned for three steps on real aclsum pairs; the real model builder, the real
onnxruntime-genai generator, PyTorch as the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.generative import aclsum_pairs, fine_tuned, tiny_llama
from transferkit.cli.main import app
from transferkit.errors import ConfigError, ModelError, ParityError
from transferkit.export import export_model
from transferkit.export.config import INT4_RECIPE_NAMES, ExportConfig
from transferkit.export.generative import (
    DEFAULT_INT4_RECIPE,
    INT4_RECIPES,
    PARITY_TOKENS,
    og_generate,
    parity_gate,
    prompt_format,
)


@pytest.fixture(scope="module")
def llama(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def pairs(llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return aclsum_pairs(llama, tmp_path_factory.mktemp("aclsum") / "prepared")


@pytest.fixture(scope="module")
def model(pairs: Path, llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fine_tuned(pairs, llama, tmp_path_factory.mktemp("sft") / "model")


@pytest.fixture(scope="module")
def exported(model: Path, pairs: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("export") / "onnx"
    result = export_model(ExportConfig(model_dir=model, data_dir=pairs, out_dir=out, threads=1, max_eval_samples=6,
                                       max_drop=100.0))
    return out, result


def test_export_builds_fp32_and_int4_with_gates_and_report(exported: tuple[Path, object], model: Path) -> None:
    import onnx

    out, result = exported
    assert result.task == "summarization" and result.target == "cpu"
    assert result.parity_prompts == 6 and result.parity_token_agreement >= 0.95
    assert result.parity_logits_max_abs_diff <= 1e-3
    assert set(result.variants) == {"fp32", "int4"} and result.recommended_variant == "int4"
    fp32, int4 = result.variants["fp32"], result.variants["int4"]
    assert int4.size_bytes < fp32.size_bytes / 2  # 4-bit weights
    for v in (fp32, int4):
        assert v.rougeL is not None and 0 <= v.rougeL <= 1 and v.tokens_per_s > 0 and v.ttft_ms > 0
        assert (out / v.dir / "genai_config.json").is_file() and (out / v.dir / "tokenizer.json").is_file()
    assert int4.rougeL_drop_pt == pytest.approx(100 * (fp32.rougeL - int4.rougeL), abs=1e-3) and int4.kept
    graph = onnx.load(out / "int4" / "model.onnx", load_external_data=False)
    assert any(node.op_type == "MatMulNBits" for node in graph.graph.node)
    assert not any(node.op_type == "MatMulNBits" for node in onnx.load(out / "fp32" / "model.onnx",
                                                                       load_external_data=False).graph.node)
    genai = json.loads((out / "int4" / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 1
    assert genai["search"]["do_sample"] is False and genai["model"]["eos_token_id"] == 102
    spec = json.loads((out / "generation_spec.json").read_text())
    saved = json.loads((model / "generation_config.json").read_text())
    assert spec["recommended"] == "int4" and spec["max_new_tokens"] == saved["max_new_tokens"] == 12
    assert spec["context_length"] == 256 and set(spec["variants"]) == {"fp32", "int4"}
    assert spec["quantization_aware"] == "none"  # trained without --quantization-aware
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["variants"]["int4"]["tokens_per_s"] == int4.tokens_per_s
    report = (out / "report.md").read_text()
    assert "Parity gate" in report and "| int4 |" in report and "tokens/s" in report
    scalars = result.scalar_metrics()  # what the pipeline's onnx_quantize step logs to KFP Metrics
    assert scalars["parity_token_agreement"] == result.parity_token_agreement and scalars["passed"] == 1.0
    assert scalars["int4_rougeL"] == int4.rougeL and scalars["fp32_size_mb"] == round(fp32.size_bytes / 1e6, 3)
    assert scalars["int4_tokens_per_s"] == int4.tokens_per_s


def test_served_prompt_format_rebuilds_the_training_prompt_ids(exported: tuple[Path, object], model: Path) -> None:
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    from transferkit.data.prompts import prompt_ids

    out, _ = exported
    fmt = json.loads((out / "generation_spec.json").read_text())["prompt"]
    hf = AutoTokenizer.from_pretrained(model)
    fast = Tokenizer.from_file(str(out / "int4" / "tokenizer.json"))  # what the server loads
    for message in ("We propose a parser for long documents.", "Résumé: a model, two results!"):
        ids = fast.encode(fmt["prefix"] + message + fmt["suffix"], add_special_tokens=fmt["add_special_tokens"]).ids
        if ids and ids[-1] == fmt["drop_trailing_id"]:
            ids = ids[:-1]
        assert ids == prompt_ids(hf, None, message)


def test_parity_gate_raises_when_the_graph_is_another_model(exported: tuple[Path, object], llama: Path) -> None:
    import onnxruntime_genai as og
    from transformers import AutoModelForCausalLM

    out, _ = exported
    base = AutoModelForCausalLM.from_pretrained(llama).eval()  # the random base, not the fine-tuned graph's weights
    graph = og.Model(str(out / "fp32"))
    with pytest.raises(ParityError, match=r"first 32 greedy tokens identical .* first-step logits max \|diff\|"):
        parity_gate(base, graph, [[101, 2057, 16599, 1037], [101, 1996, 3259]])
    tokens, first, total = og_generate(graph, [101, 2057, 16599], PARITY_TOKENS, min_new=PARITY_TOKENS)
    assert len(tokens) == PARITY_TOKENS and 0 < first <= total


def _lm_head_bits(variant: Path) -> int:
    import onnx

    graph = onnx.load(variant / "model.onnx", load_external_data=False).graph
    (head,) = [n for n in graph.node if n.op_type == "MatMulNBits" and "lm_head" in n.name]
    return next(a.i for a in head.attribute if a.name == "bits")


def test_int4_recipes_are_the_builders_options(exported: tuple[Path, object]) -> None:
    assert set(INT4_RECIPES) == set(INT4_RECIPE_NAMES) and ExportConfig.int4_recipe == DEFAULT_INT4_RECIPE
    out, result = exported
    assert result.variants["int4"].recipe == DEFAULT_INT4_RECIPE == "rtn" and _lm_head_bits(out / "int4") == 4
    spec = json.loads((out / "generation_spec.json").read_text())
    assert spec["variants"]["int4"]["recipe"] == "rtn" and "recipe" not in spec["variants"]["fp32"]
    report = (out / "report.md").read_text()
    assert "| int4 recipe |" in report and "| int4 | rtn |" in report and "| fp32 | - |" in report
    with pytest.raises(ConfigError, match=r"^int4_recipe: 'gptq' is not one of rtn, rtn-int8-head, k-quant-mixed$"):
        ExportConfig(model_dir=out, data_dir=out, out_dir=out / "x", int4_recipe="gptq")


def test_cli_export_of_a_generative_model_prints_the_variants(model: Path, pairs: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", "--model", str(model), "--data", str(pairs), "--out",
                                      str(tmp_path / "onnx"), "--threads", "1", "--max-eval-samples", "2",
                                      "--max-drop", "100", "--int4-recipe", "rtn-int8-head"])
    assert result.exit_code == 0, result.output
    assert "recommended int4" in result.output and "tokens/s" in result.output and "fp32" in result.output
    assert _lm_head_bits(tmp_path / "onnx" / "int4") == 8  # the recipe's LM head in int8, the rest int4


def test_a_classifier_given_to_the_generative_export_is_refused(pairs: Path, tmp_path: Path) -> None:
    from transferkit.models.catalog import resolve_model

    with pytest.raises(ModelError, match="is not a causal language model; task summarization"):
        export_model(ExportConfig(model_dir=resolve_model("minilm-l6").path, data_dir=pairs, out_dir=tmp_path / "o"))
    assert not (tmp_path / "o").exists()


def test_prompt_format_without_a_chat_template_uses_the_plain_separator(model: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model)
    tokenizer.chat_template = None
    fmt = prompt_format(tokenizer)
    assert fmt["prefix"] == "" and fmt["suffix"].endswith("### Response:\n") and fmt["add_special_tokens"]


def test_a_recipe_the_builder_cannot_apply_fails_in_one_line_with_nothing_written(model: Path, pairs: Path,
                                                                                  tmp_path: Path) -> None:
    from transferkit.errors import ExportError

    out = tmp_path / "onnx"
    with pytest.raises(ExportError, match=r"model builder failed for int4/cpu: ValueError: cannot reshape") as info:
        export_model(ExportConfig(model_dir=model, data_dir=pairs, out_dir=out, threads=1, max_eval_samples=2,
                                  int4_recipe="k-quant-mixed"))  # k-quant on the tiny Llama's 32-wide layers
    assert "\n" not in str(info.value) and not out.exists() and not list(tmp_path.glob(".onnx.tmp-*"))
