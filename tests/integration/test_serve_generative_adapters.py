"""Several LoRA adapters over one base graph, served by the real local Triton: a request names its adapter.

The tiny random Llama is fine-tuned for three steps and exported (for generation_spec.json); two random LoRA
adapters (PEFT, non-zero B) over the fine-tuned model become ONNX Runtime GenAI adapter files over one fp32 base
graph, which replaces the export's fp32 variant and is served.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.generative import tiny_generative_export
from transferkit.errors import ExportError, ServingError
from transferkit.export.generative_adapters import build_adapter_variant
from transferkit.serve.generative import build_generative_repository, generate, read_spec, stream_generate
from transferkit.serve.local import LocalTriton

pytestmark = pytest.mark.integration

NAME = "summarizer"
TEXT = "We propose a new parser for long documents and evaluate it on three benchmarks."


def _lora(model: Path, out: Path, seed: int, rank: int = 4) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model),
                          LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["q_proj", "v_proj"],
                                     init_lora_weights=False))
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> dict:
    root = tmp_path_factory.mktemp("adapters")
    model, _ = tiny_generative_export(root)
    adapters = {"alpha": _lora(model, root / "lora-alpha", 1), "beta": _lora(model, root / "lora-beta", 2)}
    export = root / "onnx"
    spec = read_spec(export)
    plain = root / "plain-fp32"
    shutil.copytree(export / spec["variants"]["fp32"]["dir"], plain)  # the base without adapters, for reference
    assert build_adapter_variant(model, adapters, export / spec["variants"]["fp32"]["dir"]) == ["alpha", "beta"]
    return {"root": root, "model": model, "export": export, "adapters": adapters, "plain": plain, "spec": spec}


@pytest.fixture(scope="module")
def server(built: dict, tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("triton") / "repository"
    repo.mkdir()
    build_generative_repository(built["export"], repo, NAME, variant="fp32", threads=1, concurrency=2)
    with LocalTriton(repo, models=[NAME], exit_timeout=3) as triton:
        yield triton


def _in_process(spec: dict, variant: Path, text: str, max_tokens: int) -> str:
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    from transferkit.export.generative import og_generate

    tokenizer = Tokenizer.from_file(str(variant / "tokenizer.json"))
    fmt = spec["prompt"]
    ids = tokenizer.encode(fmt["prefix"] + text + fmt["suffix"], add_special_tokens=fmt["add_special_tokens"]).ids
    if ids[-1] == fmt["drop_trailing_id"]:
        ids = ids[:-1]
    tokens, _, _ = og_generate(og.Model(str(variant)), ids, max_tokens)
    return tokenizer.decode(tokens, skip_special_tokens=True).strip()


def test_adapter_files_sit_beside_one_base_graph(server: LocalTriton) -> None:
    model_dir = server.repository / NAME / "1" / "model"
    assert sorted(p.name for p in (model_dir / "adapters").iterdir()) == ["alpha.onnx_adapter", "beta.onnx_adapter"]
    assert len(list(model_dir.glob("*.onnx"))) == 1
    assert "adapters: alpha, beta" in server.log_path.read_text(errors="replace")


def test_each_request_gets_the_adapter_it_names(server: LocalTriton, built: dict, tmp_path: Path) -> None:
    base = generate(server.http_url, NAME, TEXT, max_tokens=10)
    assert base == _in_process(built["spec"], built["plain"], TEXT, 10) != ""  # no adapter: the base model
    served = {}
    for name, adapter in built["adapters"].items():
        # The reference: the builder's own graph with this adapter merged in, run in process.
        merged = tmp_path / f"merged-{name}"
        subprocess.run([sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(built["model"]),
                        "-o", str(merged), "-p", "fp32", "-e", "cpu", "-c", str(tmp_path / "cache"),
                        "--extra_options", f"adapter_path={adapter}"], check=True, capture_output=True)
        served[name] = generate(server.http_url, NAME, TEXT, max_tokens=10, adapter=name)
        assert served[name] == _in_process(built["spec"], merged, TEXT, 10)
        streamed = "".join(p.text for p in stream_generate(server.http_url, NAME, TEXT, max_tokens=10, adapter=name))
        assert streamed.strip() == served[name]
    assert len({base, served["alpha"], served["beta"]}) == 3  # the adapters really change the output


def test_unknown_adapter_is_a_one_line_400(server: LocalTriton) -> None:
    with pytest.raises(ServingError, match=r"HTTP 400: .*adapter: unknown adapter 'gamma'; this model serves: "
                                           r"alpha, beta") as info:
        generate(server.http_url, NAME, TEXT, max_tokens=4, adapter="gamma")
    assert "\n" not in str(info.value)
    assert generate(server.http_url, NAME, TEXT, max_tokens=4, adapter="beta")  # the server keeps serving


def test_adapters_of_different_rank_are_refused(built: dict, tmp_path: Path) -> None:
    other = _lora(built["model"], tmp_path / "lora-r8", 3, rank=8)
    with pytest.raises(ExportError, match=r"lora-r8/adapter_config.json: r / target_modules .* differ from adapter "
                                          r"'alpha'"):
        build_adapter_variant(built["model"], {"alpha": built["adapters"]["alpha"], "wide": other}, tmp_path / "o")
    assert not (tmp_path / "o").exists()
