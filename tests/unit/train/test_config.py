import dataclasses
from pathlib import Path

import pytest
import typer

from transferkit.cli.main import app
from transferkit.errors import ConfigError
from transferkit.options import from_kfp_parameters, option_fields
from transferkit.train.config import TrainConfig, config_to_cli_args, parse_class_weights


def make(**overrides):
    base = {"data_dir": Path("data"), "model": "minilm-l6", "strategy": "full", "out_dir": Path("out")}
    base.update(overrides)
    return TrainConfig(**base)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("strategy", "finetune"),
        ("learning_rate", 0.0),
        ("learning_rate", -1e-5),
        ("head_learning_rate", 0),
        ("epochs", 0),
        ("epochs", -2.0),
        ("batch_size", 0),
        ("batch_size", -8),
        ("max_steps", 0),
        ("max_length", 0),
        ("max_length", "long"),
        ("truncation", "middle"),
        ("long_documents", "split"),
        ("aggregation", "sum"),
        ("stride", -1),
        ("stride", 8),
        ("llrd", 0.0),
        ("llrd", 1.5),
        ("warmup_ratio", 1.0),
        ("weight_decay", -0.1),
        ("scheduler", "step"),
        ("metric", "auc"),
        ("precision", "int8"),
        ("augment", "backtranslate"),
        ("augment_prob", 1.0),
        ("gradient_accumulation_steps", 0),
        ("early_stopping_patience", -1),
        ("early_stopping_min_delta", -0.5),
        ("l2sp", -1.0),
        ("class_weights", "1,x"),
        ("class_weights", "1,-2"),
        ("zero_shot_temperature", 0),
        ("min_retention", 1.5),
        ("pooling", "max"),
        ("save_total_limit", 0),
    ],
)
def test_bad_values_raise_one_line_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError) as info:
        make(**{field: value})
    message = str(info.value)
    assert message.startswith(f"{field}:")
    assert "\n" not in message


def test_option_combinations_are_checked():
    with pytest.raises(ConfigError, match="^unfreeze_top_layers: only applies to strategy feature_extraction"):
        make(unfreeze_top_layers=2)
    with pytest.raises(ConfigError, match="^l2sp: needs pre-trained weights"):
        make(strategy="scratch", l2sp=0.1)
    with pytest.raises(ConfigError, match="^label_descriptions: only used by strategy off_the_shelf"):
        make(label_descriptions="d.json")
    with pytest.raises(ConfigError, match="^save_steps: 3 must be a multiple of eval_steps"):
        make(save_steps=3, eval_steps=2)
    with pytest.raises(ConfigError, match="^out_dir: .* must not be inside the dataset directory"):
        make(out_dir=Path("data") / "model")
    with pytest.raises(ConfigError, match="^checkpoint_dir: must differ from out_dir"):
        make(checkpoint_dir=Path("out"))


def test_class_weights_parse():
    assert parse_class_weights("none") == "none"
    assert parse_class_weights("Balanced") == "balanced"
    assert parse_class_weights("1, 2.5") == [1.0, 2.5]
    assert make(class_weights="2,1").parsed_class_weights == [2.0, 1.0]


def test_default_checkpoint_dir_is_a_stable_sibling_of_the_output(tmp_path):
    config = make(out_dir=tmp_path / "model")
    assert config.resolved_checkpoint_dir == tmp_path / "model.checkpoints"
    assert make(checkpoint_dir=tmp_path / "pvc").resolved_checkpoint_dir == tmp_path / "pvc"


def _parse_cli(args):
    command = typer.main.get_command(app).commands["train"]
    ctx = command.make_context("train", list(args))
    return ctx.params


def test_cli_args_round_trip_through_the_real_command_line():
    config = make(
        learning_rate=3e-5, head_learning_rate=1e-3, llrd=0.8, weight_decay=0.0, warmup_ratio=0.1, scheduler="cosine",
        epochs=2.5, batch_size=8, gradient_accumulation_steps=2, max_length=48, early_stopping_patience=2,
        early_stopping_min_delta=0.01, metric="f1_macro", eval_steps=5, save_steps=10, seed=7, precision="fp32",
        gradient_checkpointing=True, augment="token_mask", augment_prob=0.2, class_weights="balanced", l2sp=0.01,
        group_by_length=False, checkpoint_dir=Path("/pvc/ckpt"), resume=False, keep_checkpoints=True,
        feature_cache=False, preserve_source=True, min_retention=0.7,
    )
    params = _parse_cli(config_to_cli_args(config))
    names = {f.name for f in dataclasses.fields(TrainConfig) if f.init}
    assert TrainConfig(**{name: params[name] for name in names}) == config


def test_every_config_field_is_a_declared_option_of_the_cli():
    names = {f.name for f in dataclasses.fields(TrainConfig) if f.init}
    assert {f.name for f in option_fields(TrainConfig)} == names
    params = _parse_cli(["--data", "d", "--model", "m", "--strategy", "full", "--out", "o"])
    assert names <= set(params)


def test_component_parameters_map_to_options_with_their_unset_values():
    import inspect

    from components.fine_tune.component import fine_tune

    signature = inspect.signature(fine_tune.python_func)
    defaults = {name: p.default for name, p in signature.parameters.items()
                if p.default is not inspect.Parameter.empty}
    defaults["model"] = defaults.pop("base_model")
    for launch_only in ("checkpoint_root", "nproc_per_node", "tuned_options", "tuned_config"):
        defaults.pop(launch_only)
    values = from_kfp_parameters(TrainConfig, defaults)
    # Every "catalog default" sentinel of the component is left out (None in TrainConfig); the rest keep the
    # component's value.
    for name in ("max_steps", "learning_rate", "head_learning_rate", "batch_size", "max_length", "image_size",
                 "warmup_ratio", "weight_decay", "scheduler"):
        assert name not in values, name
    config = TrainConfig(data_dir=Path("d"), out_dir=Path("o"), **values)
    assert config.learning_rate is None and config.scheduler is None and config.warmup_ratio is None
    assert values["epochs"] == 3.0 and values["llrd"] == 1.0 and values["augment"] == "none"
    assert from_kfp_parameters(TrainConfig, {"warmup_ratio": -0.5, "epochs": 0}) == {}
    with pytest.raises(KeyError, match="not_an_option"):
        from_kfp_parameters(TrainConfig, {"not_an_option": 1})
