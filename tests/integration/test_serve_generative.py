"""A generative export served by the real local Triton: decoupled python backend, ONNX Runtime GenAI, streaming.

One tiny random Llama, fine-tuned for three steps on aclsum pairs and exported (fp32 + int4), served by one server
for the whole module.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.generative import tiny_generative_export
from transferkit.errors import ServingError
from transferkit.serve.generative import build_generative_repository, generate, read_spec, stream_generate
from transferkit.serve.local import LocalTriton

pytestmark = pytest.mark.integration

NAME = "summarizer"
TEXT = "We propose a new parser for long documents and evaluate it on three benchmarks."


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    root = tmp_path_factory.mktemp("generative")
    _, export = tiny_generative_export(root)
    return export


@pytest.fixture(scope="module")
def server(export_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    repo = tmp_path_factory.mktemp("triton") / "repository"
    repo.mkdir()
    build_generative_repository(export_dir, repo, NAME, threads=1, concurrency=4)
    with LocalTriton(repo, models=[NAME], exit_timeout=3) as triton:
        yield triton
    assert not triton.running()


def _in_process(export_dir: Path, text: str, max_tokens: int) -> tuple[list[int], str]:
    """Greedy tokens and text of the served variant run in this process (the reference for the server)."""
    import onnxruntime_genai as og
    from tokenizers import Tokenizer

    from transferkit.export.generative import og_generate

    spec = read_spec(export_dir)
    variant = export_dir / spec["variants"][spec["recommended"]]["dir"]
    tokenizer = Tokenizer.from_file(str(variant / "tokenizer.json"))
    fmt = spec["prompt"]
    ids = tokenizer.encode(fmt["prefix"] + text + fmt["suffix"], add_special_tokens=fmt["add_special_tokens"]).ids
    if ids[-1] == fmt["drop_trailing_id"]:
        ids = ids[:-1]
    tokens, _, _ = og_generate(og.Model(str(variant)), ids, max_tokens)
    return tokens, tokenizer.decode(tokens, skip_special_tokens=True)


def test_repository_layout_and_decoupled_configs(server: LocalTriton) -> None:
    model = server.repository / NAME
    assert (model / "1" / "model.py").is_file() and (model / "1" / "model" / "model.onnx").is_file()
    spec = json.loads((model / "1" / "generation_spec.json").read_text())
    assert spec["served_variant"] == "int4"
    for config in (model / "config.pbtxt", model / "configs" / "local.pbtxt"):
        assert "decoupled: true" in config.read_text()
    assert "KIND_GPU" in (model / "config.pbtxt").read_text()
    assert "KIND_CPU" in (model / "configs" / "local.pbtxt").read_text()
    genai = json.loads((model / "1" / "model" / "genai_config.json").read_text())
    assert genai["model"]["decoder"]["session_options"]["intra_op_num_threads"] == 1


def test_generate_returns_the_in_process_greedy_text(server: LocalTriton, export_dir: Path) -> None:
    tokens, expected = _in_process(export_dir, TEXT, 10)
    assert len(tokens) == 10  # the fine-tuned tiny model does not stop early on this prompt
    assert generate(server.http_url, NAME, TEXT, max_tokens=10) == expected.strip() != ""


def test_generate_stream_sends_tokens_as_they_come(server: LocalTriton, export_dir: Path) -> None:
    _, expected = _in_process(export_dir, TEXT, 12)
    pieces = list(stream_generate(server.http_url, NAME, TEXT, max_tokens=12))
    assert len(pieces) >= 6  # one event per new piece of text, not one at the end
    assert "".join(p.text for p in pieces) == expected
    times = [p.at for p in pieces]
    assert times == sorted(times) and times[-1] > times[0]


def test_grpc_streaming_with_sampling_is_seeded(server: LocalTriton) -> None:
    import numpy as np
    import tritonclient.grpc as grpcclient

    def run(seed: int) -> str:
        pieces: list[str] = []
        done = threading.Event()

        def callback(result, error):
            if error is not None:
                pieces.append(f"ERROR {error}")
                done.set()
                return
            if result.get_response().parameters.get("triton_final_response", None) and \
                    result.get_response().parameters["triton_final_response"].bool_param:
                done.set()
            out = result.as_numpy("text_output")
            if out is not None:
                pieces.extend(v.decode() for v in out)

        client = grpcclient.InferenceServerClient(server.grpc_url)
        inputs = []
        for name, dtype, value in (("text_input", "BYTES", np.array([TEXT.encode()], dtype=object)),
                                   ("max_tokens", "INT32", np.array([8], dtype=np.int32)),
                                   ("temperature", "FP32", np.array([1.5], dtype=np.float32)),
                                   ("seed", "INT64", np.array([seed], dtype=np.int64)),
                                   ("stream", "BOOL", np.array([True]))):
            tensor = grpcclient.InferInput(name, [1], dtype)
            tensor.set_data_from_numpy(value)
            inputs.append(tensor)
        client.start_stream(callback=callback)
        client.async_stream_infer(NAME, inputs, enable_empty_final_response=True)
        assert done.wait(60)
        client.stop_stream()
        client.close()
        assert not any(p.startswith("ERROR") for p in pieces), pieces
        return "".join(pieces)

    first, again = run(7), run(7)
    assert first == again and first.strip()


@pytest.mark.parametrize(("params", "message"), [
    ({"max_tokens": 0}, "max_tokens: 0 must be in [1, 255]"),
    ({"max_tokens": 5000}, "max_tokens: 5000 must be in [1, 255]"),
    ({"top_p": 1.5, "temperature": 1.0}, "top_p: 1.5 must be in (0, 1]"),
])
def test_bad_parameters_get_400_with_a_one_line_message(server: LocalTriton, params: dict, message: str) -> None:
    with pytest.raises(ServingError, match=r"HTTP 400: .*" + message.replace("[", r"\[").replace("(", r"\(")) as info:
        generate(server.http_url, NAME, TEXT, **params)
    assert "\n" not in str(info.value)


def test_prompt_longer_than_the_context_fails_that_request_only(server: LocalTriton) -> None:
    long_text = " ".join(["parsing"] * 300)
    with pytest.raises(ServingError, match=r"HTTP 400: .*the prompt has \d+ tokens; with max_tokens 8 it exceeds the "
                                           r"model's context of 256 tokens"):
        generate(server.http_url, NAME, long_text, max_tokens=8)
    with pytest.raises(ServingError, match="HTTP 400: .*the prompt has"):
        list(stream_generate(server.http_url, NAME, long_text, max_tokens=8))
    assert generate(server.http_url, NAME, TEXT, max_tokens=4)  # the server keeps serving


def test_client_disconnect_mid_stream_frees_the_generator(server: LocalTriton) -> None:
    body = json.dumps({"text_input": TEXT, "max_tokens": 200, "stream": True}).encode()
    request = (f"POST /v2/models/{NAME}/generate_stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    sock = socket.create_connection((server.host, server.http_port), timeout=30)
    sock.sendall(request)
    received = b""
    while b"data:" not in received:  # headers and the first event may arrive in separate segments
        chunk = sock.recv(4096)
        assert chunk, f"the server closed the stream before its first event: {received!r}"
        received += chunk
    sock.close()
    # Others are served while (and after) the abandoned request ends.
    results = []
    threads = [threading.Thread(target=lambda: results.append(generate(server.http_url, NAME, TEXT, max_tokens=6)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 3 and len(set(results)) == 1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "generator freed" not in server.log_path.read_text(errors="replace"):
        time.sleep(0.5)
    assert "request cancelled after" in server.log_path.read_text(errors="replace")


def test_generative_load_reports_ttft_itl_and_tokens_per_s(server: LocalTriton) -> None:
    from transferkit.serve.genload import is_generative_model, run_generative_load

    assert is_generative_model(server.http_url, NAME)
    result = run_generative_load(server.http_url, NAME, concurrency=(1, 3), requests=6, max_tokens=16)
    assert result.failed_requests == 0 and [lv.concurrency for lv in result.levels] == [1, 3]
    for level in result.levels:
        assert level.output_tokens == 6 * 16  # the tiny model emits one piece per token and never stops early
        assert level.output_tokens_per_s > 0 and 0 < level.ttft_ms["p50"] <= level.ttft_ms["p95"]
        assert level.itl_ms["p50"] >= 0


def test_bench_serve_cli_detects_the_generative_model(server: LocalTriton, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from transferkit.cli.main import app

    out = tmp_path / "load.json"
    result = CliRunner().invoke(app, ["bench", "serve", "--model", NAME, "--http-url", server.http_url,
                                      "--concurrency", "2", "--requests", "4", "--max-tokens", "8",
                                      "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "TTFT p50" in result.output
    payload = json.loads(out.read_text())
    assert payload["failed_requests"] == 0 and payload["levels"][0]["output_tokens"] == 4 * 8


def test_bad_requests_under_load_count_as_failed(server: LocalTriton) -> None:
    from transferkit.serve.genload import run_generative_load

    result = run_generative_load(server.http_url, NAME, concurrency=(2,), requests=2, max_tokens=4,
                                 prompts=(" ".join(["parsing"] * 300),))
    assert result.failed_requests == 2 and "exceeds the model's context" in result.levels[0].first_error


def test_sample_request_streams_the_first_test_pair(server: LocalTriton, export_dir: Path) -> None:
    """The end of a local pipeline run: the task registry's sample request, printed by `pipeline run --local`."""
    import pyarrow.parquet as pq

    from transferkit.cli._common import console
    from transferkit.cli.pipeline import _print_sample
    from transferkit.data.prompts import user_message
    from transferkit.tasks import get_task

    pairs = export_dir.parent / "pairs"  # the prepared data the export was gated on (tests/generative.py)
    sample = get_task("summarization").sample_request(server.http_url, NAME, dataset_dir=pairs, export_dir=export_dir,
                                                      work_dir=export_dir.parent, sample_text="unused")
    first = pq.read_table(pairs / "test.parquet").slice(0, 1).to_pylist()[0]
    spec = read_spec(export_dir)
    # The pipeline's own user message (instruction, blank line, source), its source cut at the end to the budget
    # evaluation uses: the trained length minus the saved max_new_tokens.
    budget = max(spec["seq_len_trained"] - spec["max_new_tokens"], spec["seq_len_trained"] // 2)
    assert sample["source_tokens_cut"] > 0 and 0 < sample["prompt_tokens"] <= budget
    cut_source = sample["input"].removeprefix(f"{first['instruction'].strip()}\n\n")
    assert first["source"].startswith(cut_source) and sample["input"] == user_message(first["instruction"], cut_source)
    assert sample["reference"] == first["target"]
    tokens, expected = _in_process(export_dir, sample["input"], spec["max_new_tokens"])
    assert sample["generated"] == expected.strip() != ""  # greedy: the streamed text is the in-process one
    assert 1 <= sample["tokens"] <= len(tokens) and 0 < sample["ttft_ms"] <= sample["seconds"] * 1000
    assert sample["endpoint"] == f"{server.http_url}/v2/models/{NAME}/generate_stream"
    with console.capture() as captured:
        _print_sample(sample, None)
    shown = captured.get()
    assert f"{sample['tokens']} tokens" in shown and "generated:" in shown and sample["generated"].split()[0] in shown
