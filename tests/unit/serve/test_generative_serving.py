"""Generative serving helpers without a server: the decoupled config, spec checks, load-generator arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from transferkit.errors import ConfigError, ServingError
from transferkit.serve.generative import build_generative_repository, model_config, read_spec
from transferkit.serve.genload import is_generative_model, run_generative_load
from transferkit.serve.local import free_port


def test_decoupled_config_parses_as_a_triton_model_config() -> None:
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    parsed = text_format.Parse(model_config("summarizer", kind="KIND_CPU", concurrency=3),
                               model_config_pb2.ModelConfig())
    assert parsed.backend == "python" and parsed.model_transaction_policy.decoupled
    assert [i.name for i in parsed.input] == ["text_input", "max_tokens", "temperature", "top_p", "seed", "stream",
                                             "adapter"]
    assert all(i.optional for i in parsed.input[1:]) and not parsed.input[0].optional
    assert parsed.output[0].name == "text_output" and parsed.parameters["max_concurrent_requests"].string_value == "3"
    assert parsed.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


def test_a_classifier_export_is_not_a_generative_export(tmp_path: Path) -> None:
    (tmp_path / "io_spec.json").write_text("{}")
    with pytest.raises(ServingError, match=r"generation_spec.json: not a generative export \(FileNotFoundError\)"):
        read_spec(tmp_path)
    (tmp_path / "generation_spec.json").write_text(json.dumps({"kind": "classifier"}))
    with pytest.raises(ServingError, match="kind 'classifier' is not 'generative'"):
        build_generative_repository(tmp_path, tmp_path / "repo", "m")


def test_unknown_variant_is_refused_with_the_kept_ones(tmp_path: Path) -> None:
    spec = {"kind": "generative", "recommended": "int4", "variants": {"fp32": {"dir": "fp32"}}}
    (tmp_path / "generation_spec.json").write_text(json.dumps(spec))
    with pytest.raises(ServingError, match=r"variant: 'int4' is not in .*generation_spec.json \(kept: fp32\)"):
        build_generative_repository(tmp_path, tmp_path / "repo", "m")
    assert not (tmp_path / "repo" / "m" / "1").exists()


def test_load_generator_arguments_and_an_absent_server() -> None:
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    assert is_generative_model(url, "m") is False
    for bad in ({"requests": 0}, {"max_tokens": 0}, {"concurrency": (0,)}, {"prompts": ()}):
        with pytest.raises(ConfigError, match="must be >= 1"):
            run_generative_load(url, "m", **bad)
    result = run_generative_load(url, "m", concurrency=(1,), requests=2, max_tokens=4, timeout_s=5)
    assert result.failed_requests == 2 and result.levels[0].first_error
