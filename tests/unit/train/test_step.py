"""The fine_tune component's library call: parameter sentinels, per-task options and the summary it reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers import prepare_image_data, write_movie_slice
from transferkit.errors import ConfigError, TrainingError
from transferkit.train.step import config_from_parameters, read_step_result

COMPONENT_DEFAULTS = {
    "base_model": "minilm-l6", "strategy": "full", "epochs": 3.0, "max_steps": 0, "learning_rate": 0.0,
    "head_learning_rate": 0.0, "llrd": 1.0, "l2sp": 0.0, "batch_size": 0, "max_length": 0, "image_size": 0,
    "warmup_ratio": -1.0, "weight_decay": -1.0, "scheduler": "", "unfreeze_top_layers": 0,
    "early_stopping_patience": 0, "augment": "none", "class_weights": "none", "preserve_source": False,
    "min_retention": 0.5, "seed": 42,
}


def test_sentinels_mean_the_catalog_default(tmp_path: Path) -> None:
    data = write_movie_slice(tmp_path / "movie", train=8, validation=4, test=4)
    config = config_from_parameters(data, tmp_path / "out", dict(COMPONENT_DEFAULTS))
    assert (config.max_steps, config.learning_rate, config.batch_size, config.max_length) == (None,) * 4
    assert (config.warmup_ratio, config.weight_decay, config.scheduler, config.image_size) == (None,) * 4
    assert config.epochs == 3.0 and config.model == "minilm-l6" and config.out_dir == tmp_path / "out"
    set_values = {**COMPONENT_DEFAULTS, "warmup_ratio": 0.0, "weight_decay": 0.0, "scheduler": "cosine",
                  "max_length": 48}
    config = config_from_parameters(data, tmp_path / "out", set_values)
    assert (config.warmup_ratio, config.weight_decay, config.scheduler, config.max_length) == (0.0, 0.0, "cosine",
                                                                                                48)


def test_preserve_source_is_kept_for_text_and_dropped_for_images(tmp_path: Path) -> None:
    params = {**COMPONENT_DEFAULTS, "preserve_source": True}
    text = write_movie_slice(tmp_path / "movie", train=8, validation=4, test=4)
    assert config_from_parameters(text, tmp_path / "a", params).preserve_source is True
    images = prepare_image_data(tmp_path / "digits", max_rows=300)
    image_params = {**params, "base_model": "efficientnet-lite0"}
    assert config_from_parameters(images, tmp_path / "b", image_params).preserve_source is False


def test_invalid_parameter_is_a_config_error(tmp_path: Path) -> None:
    data = write_movie_slice(tmp_path / "movie", train=8, validation=4, test=4)
    with pytest.raises(ConfigError, match="strategy"):
        config_from_parameters(data, tmp_path / "out", {**COMPONENT_DEFAULTS, "strategy": "everything"})


def test_step_result_reads_the_summary(tmp_path: Path) -> None:
    data = write_movie_slice(tmp_path / "movie", train=8, validation=4, test=4)
    config = config_from_parameters(data, tmp_path / "out", dict(COMPONENT_DEFAULTS))
    with pytest.raises(TrainingError, match="training_summary.json: no readable training summary"):
        read_step_result(config)
    config.out_dir.mkdir()
    (config.out_dir / "training_summary.json").write_text(json.dumps({
        "best": {"value": None}, "validation": {"accuracy": 0.75, "note": "x"}, "wall_time_s": 2.5,
        "parameters": {"trainable": 10}, "artifacts": {"report_html": "training_report.html"},
    }))
    result = read_step_result(config)
    assert result.validation_metric == 0.0
    assert result.metrics == {"validation_accuracy": 0.75, "wall_time_s": 2.5, "trainable_params": 10.0}
    assert result.report_html == config.out_dir / "training_report.html"
    assert result.metadata == {"strategy": "full", "base_model": "minilm-l6", "framework": "transformers"}


def test_a_lora_and_full_sweep_shares_one_parameter_set(tmp_path: Path) -> None:
    """``strategies: ["lora", "full"]``: the same component parameters configure both runs."""
    data = write_movie_slice(tmp_path / "movie", train=8, validation=4, test=4)
    shared = {**COMPONENT_DEFAULTS, "l2sp": 0.1, "lora_rank": 4, "lora_alpha": 8.0, "lora_dropout": 0.1,
              "lora_target": "all-linear", "dora": True, "lora_scale": 0.7}
    lora = config_from_parameters(data, tmp_path / "lora", {**shared, "strategy": "lora"})
    assert (lora.lora_rank, lora.lora_alpha, lora.lora_targets, lora.dora, lora.lora_scale) == (
        4, 8.0, ["all-linear"], True, 0.7)
    assert lora.l2sp == 0.0  # meaningless on a frozen base
    full = config_from_parameters(data, tmp_path / "full", {**shared, "strategy": "full"})
    assert full.l2sp == 0.1 and full.lora_rank == 8 and full.dora is False and full.lora_scale == 1.0


def test_preserve_source_is_dropped_for_a_decoder_base(tmp_path: Path) -> None:
    from tests.helpers import write_tiny_llama

    data = write_movie_slice(tmp_path / "movie", train=8, validation=4, test=4)
    llama = write_tiny_llama(tmp_path / "llama")
    params = {**COMPONENT_DEFAULTS, "preserve_source": True, "strategy": "lora", "base_model": str(llama)}
    assert config_from_parameters(data, tmp_path / "a", params).preserve_source is False
    assert config_from_parameters(data, tmp_path / "b", {**params, "base_model": "minilm-l6"}).preserve_source is True
