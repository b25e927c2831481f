"""Fine-tuning EfficientNet-Lite0 (real ImageNet weights) on real scikit-learn digits: every strategy path.

Images are upsampled to 32 x 32 (``--image-size 32``) so a CPU step takes a fraction of a second.
"""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.helpers import prepare_image_data, write_image_model, write_movie_slice, write_tiny_transformers_image_model
from transferkit.cli.main import app
from transferkit.data.prepared import load_prepared
from transferkit.errors import ConfigError, ModelError
from transferkit.io import read_json
from transferkit.models.vision import load_image_classifier, load_image_preprocessor
from transferkit.train.config import TrainConfig
from transferkit.train.run import run_training

pytestmark = pytest.mark.integration
runner = CliRunner()
SIZE = 32


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return prepare_image_data(tmp_path_factory.mktemp("digits") / "data")


@pytest.fixture(scope="module")
def pretrained():
    """The ImageNet weights every run starts from (head excluded)."""
    model = load_image_classifier("efficientnet-lite0")
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("classifier.")}


def _validation_accuracy(model_dir, data_dir) -> float:
    model = load_image_classifier(model_dir)
    preprocessor = load_image_preprocessor(model_dir)
    dataset = load_prepared(data_dir)
    images, labels = dataset.images("validation"), np.array(dataset.label_ids("validation"))
    with torch.inference_mode():
        logits = torch.cat([model(preprocessor.batch(images[i : i + 128])).logits
                            for i in range(0, len(images), 128)])
    return float((logits.argmax(-1).numpy() == labels).mean())


def _config(data, out, **kwargs) -> TrainConfig:
    options = {"image_size": SIZE, "batch_size": 32, "logging_steps": 5}
    options.update(kwargs)
    return TrainConfig(data_dir=data, model="efficientnet-lite0", out_dir=out, **options)


def test_full_fine_tune_writes_a_model_that_reproduces_its_validation_accuracy(digits, tmp_path):
    out = tmp_path / "full"
    result = run_training(_config(digits, out, strategy="full", max_steps=40))
    assert result.written and result.global_step == 40
    assert result.trainable_params == result.total_params
    summary = read_json(out / "training_summary.json")
    assert summary["preprocessing"]["image_size"] == SIZE
    assert read_json(out / "preprocessor.json")["image_size"] == SIZE
    assert read_json(out / "labels.json") == [str(i) for i in range(10)]
    for name in ("training_report.html", "training_curves.png", "model.safetensors", "config.json"):
        assert (out / name).is_file(), name
    # The saved directory is exactly the selected model: reloading it gives the reported accuracy.
    assert _validation_accuracy(out, digits) == pytest.approx(result.validation_metrics["accuracy"], abs=1e-9)
    assert result.validation_metrics["accuracy"] > 0.5  # ten classes: chance is 0.1


def test_feature_extraction_cached_and_uncached_train_the_same_head(digits, tmp_path, pretrained):
    cached = run_training(_config(digits, tmp_path / "cached", strategy="feature_extraction", epochs=3))
    slow = run_training(_config(digits, tmp_path / "slow", strategy="feature_extraction", epochs=3,
                                feature_cache=False))
    assert cached.feature_cache["used"] is True and slow.feature_cache == {"used": False}
    assert cached.trainable_params == slow.trainable_params == 1280 * 10 + 10
    assert cached.validation_metrics["accuracy"] == pytest.approx(slow.validation_metrics["accuracy"], abs=0.01)
    assert cached.validation_metrics["accuracy"] > 0.7
    # Frozen means frozen: weights and BatchNorm running statistics of the base are the pre-trained ones.
    for directory in (tmp_path / "cached", tmp_path / "slow"):
        state = load_image_classifier(directory).state_dict()
        changed = [k for k, v in pretrained.items() if not torch.equal(state[k], v)]
        assert changed == [], changed[:5]
    again = run_training(_config(digits, tmp_path / "again", strategy="feature_extraction", epochs=3))
    assert again.feature_cache["cache_hit"] is True


def test_partial_unfreezing_with_layer_wise_decay_by_stage_and_l2sp(digits, tmp_path, pretrained):
    out = tmp_path / "top2"
    result = run_training(_config(digits, out, strategy="feature_extraction", unfreeze_top_layers=2, llrd=0.5,
                                  l2sp=0.01, max_steps=10, learning_rate=1e-3, head_learning_rate=1e-2))
    summary = read_json(out / "training_summary.json")
    groups = {g["group"]: g for g in summary["resolved"]["param_groups"]}
    layers = summary["resolved"]["num_layers"]
    assert layers == 8  # stages 1-7 of EfficientNet-Lite0 plus its top convolution
    assert summary["resolved"]["trainable_layers"] == [layers - 2, layers - 1]
    assert groups[f"layer.{layers - 1}"]["lr"] == pytest.approx(1e-3)
    assert groups[f"layer.{layers - 2}"]["lr"] == pytest.approx(5e-4)
    assert groups["head"]["lr"] == pytest.approx(1e-2)
    assert any("l2sp_penalty" in entry for entry in read_json(out / "log_history.json"))
    state = load_image_classifier(out).state_dict()
    assert torch.equal(state["encoder._conv_stem.weight"], pretrained["encoder._conv_stem.weight"])
    assert not torch.equal(state["encoder._conv_head.weight"], pretrained["encoder._conv_head.weight"])
    assert result.trainable_params < result.total_params


def test_an_interrupted_run_resumes_exactly_from_its_checkpoint(digits, tmp_path):
    checkpoints = tmp_path / "ckpt"
    first = run_training(_config(digits, tmp_path / "a", strategy="full", max_steps=6, save_steps=3,
                                 checkpoint_dir=checkpoints, keep_checkpoints=True))
    # A kill after the step-3 checkpoint: only checkpoint-3 is left.
    shutil.rmtree(checkpoints / "checkpoint-6")
    again = run_training(_config(digits, tmp_path / "b", strategy="full", max_steps=6, save_steps=3,
                                 checkpoint_dir=checkpoints, keep_checkpoints=True))
    assert again.resumed_from is not None and again.resumed_from.endswith("checkpoint-3")
    assert again.global_step == 6
    assert again.validation_metrics["accuracy"] == pytest.approx(first.validation_metrics["accuracy"], abs=1e-9)
    a = load_image_classifier(tmp_path / "a").state_dict()
    b = load_image_classifier(tmp_path / "b").state_dict()
    assert max(float((a[k].float() - b[k].float()).abs().max()) for k in a) < 1e-5


def test_augmented_training_and_scratch(digits, tmp_path):
    augmented = run_training(_config(digits, tmp_path / "aug", strategy="feature_extraction", augment="image_no_flip",
                                     max_steps=4))
    assert augmented.feature_cache == {"used": False}  # augmented inputs cannot be cached
    summary = read_json(tmp_path / "aug" / "training_summary.json")
    assert summary["config"]["augment"] == "image_no_flip"
    scratch = run_training(_config(digits, tmp_path / "scratch", strategy="scratch", max_steps=2))
    pretrained_head_free = load_image_classifier("efficientnet-lite0").state_dict()["encoder._conv_stem.weight"]
    trained = load_image_classifier(tmp_path / "scratch").state_dict()["encoder._conv_stem.weight"]
    assert not torch.allclose(trained, pretrained_head_free, atol=1e-2)
    assert scratch.trainable_params == scratch.total_params


@pytest.mark.parametrize(("options", "error", "message"), [
    ({"max_length": 64}, ConfigError, "max_length: applies to text models only"),
    ({"long_documents": "chunk"}, ConfigError, "^long_documents: applies to text models only; the data is for "
     "image-classification$"),
    ({"augment": "word_dropout"}, ConfigError, "augment: 'word_dropout' is a text augmentation"),
    ({"image_size": 8}, ConfigError, "image_size: 8 is below the minimum"),
    ({"strategy": "off_the_shelf"}, ModelError, "off_the_shelf needs a head whose labels match labels.json"),
    ({"unfreeze_top_layers": 9}, ModelError, "exceeds the model's 8 stages"),
    ({"strategy": "lora"}, ConfigError, r"^strategy: lora adapts the attention projections of transformer "
                                        r"bases \(ViT\); efficientnet-lite0 is a CNN; use strategy full or "
                                        r"feature_extraction$"),
])
def test_bad_options_for_images_are_named(digits, tmp_path, options, error, message):
    settings = {"strategy": "feature_extraction", **options}
    with pytest.raises(error, match=message):
        run_training(_config(digits, tmp_path / "bad", **settings))
    assert not (tmp_path / "bad").exists()


def test_off_the_shelf_packages_a_matching_head_in_the_dataset_label_order(digits, tmp_path):
    labels = [str(i) for i in range(10)]
    source = write_image_model(tmp_path / "reversed", list(reversed(labels)), image_size=SIZE)
    out = tmp_path / "packaged"
    result = run_training(TrainConfig(data_dir=digits, model=str(source), strategy="off_the_shelf", out_dir=out))
    assert result.trainable_params == 0 and result.stop_reason == "no_training"
    assert read_json(out / "labels.json") == labels
    # Rows were reordered, not relabelled: the packaged model reproduces the reported validation accuracy.
    assert _validation_accuracy(out, digits) == pytest.approx(result.validation_metrics["accuracy"], abs=1e-9)
    original = load_image_classifier(source).classifier.weight
    assert torch.equal(load_image_classifier(out).classifier.weight, original.flip(0))


def test_text_model_on_image_data_and_image_options_on_text_data(digits, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(digits), "--model", "minilm-l6", "--strategy", "full",
                                 "--out", str(tmp_path / "m")])
    assert result.exit_code != 0
    assert "is for text-classification" in result.output and "image-classification" in result.output
    text = write_movie_slice(tmp_path / "text", train=16, validation=8, test=8)
    with pytest.raises(ConfigError, match="image_size: applies to image data"):
        run_training(TrainConfig(data_dir=text, model="minilm-l6", strategy="full", out_dir=tmp_path / "t",
                                 image_size=64))


def test_two_cpu_processes_fine_tune_an_image_model(digits, tmp_path):
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "transferkit.cli.main", "train", "--data", str(digits), "--model",
               "efficientnet-lite0", "--strategy", "full", "--out", str(out), "--image-size", str(SIZE),
               "--batch-size", "8", "--max-steps", "2", "--nproc-per-node", "2", "--json"]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = read_json(out / "training_summary.json")
    assert json.loads(completed.stdout.strip().splitlines()[-1]) == summary
    assert summary["world_size"] == 2 and summary["resolved"]["effective_batch_size"] == 16
    assert load_image_classifier(out).config.labels == [str(i) for i in range(10)]


@pytest.mark.gpu
def test_mixed_precision_fine_tune_on_a_cuda_gpu(digits, tmp_path):
    """precision auto on CUDA: bf16 where supported, else fp16; the saved model still evaluates in fp32."""
    result = run_training(_config(digits, tmp_path / "gpu", strategy="full", max_steps=20))
    assert result.device == "cuda"
    assert result.precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    assert _validation_accuracy(tmp_path / "gpu", digits) == pytest.approx(result.validation_metrics["accuracy"],
                                                                          abs=0.01)


@pytest.mark.parametrize("kind", ["resnet", "vit", "convnext"])
def test_transformers_image_classifiers_train_by_stage_and_export(kind, digits, tmp_path):
    """Any transformers image classifier directory: cached-feature head, LLRD by stage, export with parity."""
    from transferkit.export.config import ExportConfig
    from transferkit.export.step import export_model

    base = write_tiny_transformers_image_model(kind, tmp_path)
    head = run_training(TrainConfig(data_dir=digits, model=str(base), strategy="feature_extraction", epochs=2,
                                    out_dir=tmp_path / "fe"))
    assert head.feature_cache["used"] is True
    full = run_training(TrainConfig(data_dir=digits, model=str(base), strategy="full", max_steps=8, llrd=0.5,
                                    out_dir=tmp_path / "full"))
    groups = read_json(tmp_path / "full" / "training_summary.json")["resolved"]["param_groups"]
    lrs = {g["group"]: g["lr"] for g in groups}
    assert lrs["embeddings"] < min(v for k, v in lrs.items() if k.startswith("layer."))
    assert _validation_accuracy(tmp_path / "full", digits) == pytest.approx(full.validation_metrics["accuracy"],
                                                                            abs=1e-9)
    exported = export_model(ExportConfig(model_dir=tmp_path / "full", data_dir=digits, out_dir=tmp_path / "onnx",
                                         max_drop=100.0))
    assert exported.parity_max_abs_diff < 1e-3 and "qdq" in exported.variants


def test_lora_on_a_vit_adapts_its_query_and_value_projections_and_writes_a_merged_model(digits, tmp_path):
    base = write_tiny_transformers_image_model("vit", tmp_path)
    out = tmp_path / "lora"
    result = run_training(TrainConfig(data_dir=digits, model=str(base), strategy="lora", max_steps=6, lora_rank=4,
                                      out_dir=out))
    lora = read_json(out / "training_summary.json")["lora"]
    # transformers 5 names ViT's query/value projections q_proj/v_proj.
    assert lora["target_modules"] in (["query", "value"], ["q_proj", "v_proj"]) and lora["adapted_modules"] == 2 * 2
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    # Only adapters and the new head trained: the adapted projections' own weights are the base's (+ B @ A).
    summary = read_json(out / "training_summary.json")
    assert summary["parameters"]["trainable"] < 0.2 * summary["parameters"]["total"]
    # The merged model is a plain image classifier that reproduces the validation accuracy of the run.
    assert _validation_accuracy(out, digits) == pytest.approx(result.validation_metrics["accuracy"], abs=1e-9)
