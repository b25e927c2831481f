"""`transferkit export --adapter-variant` of a LoRA-trained generative model: the per-request adapter variant.

A tiny random Llama, LoRA-tuned for three steps on real aclsum pairs; the real model builder and the real
onnxruntime-genai generator (adapter activated per request, as the Triton model does it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.generative import MAX_LENGTH, aclsum_pairs, tiny_llama
from transferkit.cli.main import app
from transferkit.errors import ConfigError
from transferkit.export.config import ExportConfig
from transferkit.export.generative import PARITY_TOKENS, og_generate


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> tuple[Path, Path, Path]:
    from transferkit.train.config import TrainConfig
    from transferkit.train.run import run_training

    root = tmp_path_factory.mktemp("lora-export")
    llama = tiny_llama(root / "llama")
    pairs = aclsum_pairs(llama, root / "pairs")
    run_training(TrainConfig(data_dir=pairs, model=str(llama), out_dir=root / "model", strategy="lora", max_steps=3,
                             batch_size=4, max_length=MAX_LENGTH, learning_rate=1e-2, max_new_tokens=12,
                             logging_steps=1))
    return llama, pairs, root / "model"


def test_export_builds_the_adapter_variant_of_a_lora_model(lora_model: tuple[Path, Path, Path],
                                                           tmp_path: Path) -> None:
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    _, pairs, model = lora_model
    assert (model / "adapter" / "adapter_config.json").is_file()
    out = tmp_path / "onnx"
    result = CliRunner().invoke(app, ["export", "--model", str(model), "--data", str(pairs), "--out", str(out),
                                      "--threads", "1", "--max-eval-samples", "2", "--max-drop", "100",
                                      "--adapter-variant", "aclsum"])
    assert result.exit_code == 0, result.output
    assert "lora" in result.output and "token-identical to the merged model" in result.output

    spec = json.loads((out / "generation_spec.json").read_text())
    assert spec["variants"]["lora"] == {"dir": "lora", "precision": "fp32", "adapters": ["aclsum"]}
    assert spec["recommended"] in ("int4", "fp32")  # the adapter variant is extra, never the recommendation
    assert (out / "lora" / "adapters" / "aclsum.onnx_adapter").is_file()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["variants"]["lora"]["reason"].startswith("base + adapter 'aclsum' per request")
    genai = json.loads((out / "lora" / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 1

    # The served variant (GenerativeExport) accepts it, and with its adapter active it decodes like the merged model.
    from transferkit.serve.generative_deploy import GenerativeExport

    assert GenerativeExport.load(out, "lora").variant == "lora"
    tokenizer = Tokenizer.from_file(str(out / "lora" / "tokenizer.json"))
    fmt = spec["prompt"]
    ids = tokenizer.encode(fmt["prefix"] + "We propose a new parser for long documents." + fmt["suffix"],
                           add_special_tokens=fmt["add_special_tokens"]).ids
    graph = og.Model(str(out / "lora"))
    adapters = og.Adapters(graph)
    adapters.load(str(out / "lora" / "adapters" / "aclsum.onnx_adapter"), "aclsum")
    with_adapter, _, _ = og_generate(graph, ids, PARITY_TOKENS, min_new=PARITY_TOKENS, adapter=(adapters, "aclsum"))
    merged, _, _ = og_generate(og.Model(str(out / "fp32")), ids, PARITY_TOKENS, min_new=PARITY_TOKENS)
    assert with_adapter == merged and len(merged) == PARITY_TOKENS


def test_adapter_variant_names_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"adapter_variant: 'bad name' must be 1-63 letters"):
        ExportConfig(model_dir=tmp_path, data_dir=tmp_path, out_dir=tmp_path / "o", adapter_variant="bad name")


def test_adapter_variant_of_a_model_without_adapter_is_refused(tmp_path: Path) -> None:
    from transferkit.errors import ExportError
    from transferkit.export.generative_adapters import export_adapter_variant

    with pytest.raises(ExportError, match=r"adapter/adapter_config.json: no readable PEFT adapter config .* "
                                          r"--strategy lora"):
        export_adapter_variant(tmp_path, "aclsum", tmp_path / "out")


def test_a_classifier_export_refuses_adapter_variant(tmp_path: Path) -> None:
    import csv

    from transferkit.data.prepare import DataPrepConfig, prepare_dataset
    from transferkit.export import export_model

    path = tmp_path / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        for i in range(40):
            writer.writerow([f"review number {i} was {'great' if i % 2 else 'awful'}", "pos" if i % 2 else "neg"])
    prepare_dataset(DataPrepConfig(dataset=str(path), out=tmp_path / "data", model="minilm-l6", max_length=16))
    with pytest.raises(ConfigError, match=r"adapter_variant: applies to LoRA-trained generative models .* is a "
                                          r"text-classification dataset"):
        export_model(ExportConfig(model_dir=tmp_path, data_dir=tmp_path / "data", out_dir=tmp_path / "o",
                                  adapter_variant="aclsum"))
    assert not (tmp_path / "o").exists()
