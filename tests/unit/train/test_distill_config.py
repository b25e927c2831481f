"""Strategy distill: option validation, the command-line round trip and the component's parameter mapping."""

from pathlib import Path

import pytest

from tests.helpers import write_movie_slice
from tests.unit.train.test_step import COMPONENT_DEFAULTS
from transferkit.errors import ConfigError
from transferkit.train import TrainConfig
from transferkit.train.config import config_to_cli_args
from transferkit.train.step import config_from_parameters


def _config(tmp_path, **kwargs):
    return TrainConfig(data_dir=tmp_path / "data", model="minilm-l6", out_dir=tmp_path / "out", **kwargs)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"strategy": "distill"}, "teacher"),
    ({"strategy": "full", "teacher": "t"}, "teacher"),
    ({"strategy": "lora", "student_layers": 2}, "student_layers"),
    ({"strategy": "full", "distill_alpha": 0.9}, "distill_alpha"),
    ({"strategy": "feature_extraction", "distill_temperature": 4.0}, "distill_temperature"),
    ({"strategy": "distill", "teacher": "t", "student_layers": 0}, "student_layers"),
    ({"strategy": "distill", "teacher": "t", "student_layers": True}, "student_layers"),
    ({"strategy": "distill", "teacher": "t", "distill_alpha": 1.5}, "distill_alpha"),
    ({"strategy": "distill", "teacher": "t", "distill_alpha": -0.1}, "distill_alpha"),
    ({"strategy": "distill", "teacher": "t", "distill_temperature": 0.0}, "distill_temperature"),
    ({"strategy": "distill", "teacher": "t", "preserve_source": True}, "preserve_source"),
])
def test_bad_distill_options_name_the_field(tmp_path, kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}:") as info:
        _config(tmp_path, **kwargs)
    assert "\n" not in str(info.value)


def test_the_teacher_cannot_be_the_output(tmp_path):
    with pytest.raises(ConfigError, match="^out_dir: .* is the teacher directory"):
        _config(tmp_path, strategy="distill", teacher=tmp_path / "out")


def test_distill_options_round_trip_through_the_command_line(tmp_path):
    config = _config(tmp_path, strategy="distill", teacher=tmp_path / "teacher", student_layers=2, distill_alpha=0.8,
                     distill_temperature=3.0)
    args = config_to_cli_args(config)
    assert args[args.index("--teacher") + 1] == str(tmp_path / "teacher")
    assert args[args.index("--student-layers") + 1] == "2" and args[args.index("--distill-alpha") + 1] == "0.8"
    assert args[args.index("--distill-temperature") + 1] == "3.0"
    assert isinstance(config.teacher, Path)


def test_a_distill_and_full_sweep_shares_one_parameter_set(tmp_path):
    """The component's defaults mean "not given"; other strategies of a sweep ignore the distill options."""
    data = write_movie_slice(tmp_path / "movie", train=8, validation=4, test=4)
    defaults = {**COMPONENT_DEFAULTS, "teacher": "", "student_layers": 0, "distill_alpha": 0.5,
                "distill_temperature": 2.0}
    plain = config_from_parameters(data, tmp_path / "a", defaults)
    assert (plain.teacher, plain.student_layers) == (None, None)
    shared = {**defaults, "teacher": str(tmp_path / "teacher"), "student_layers": 2, "distill_alpha": 0.9,
              "preserve_source": True}
    distill = config_from_parameters(data, tmp_path / "d", {**shared, "strategy": "distill"})
    assert (distill.teacher, distill.student_layers, distill.distill_alpha) == (tmp_path / "teacher", 2, 0.9)
    assert distill.distill_temperature == 2.0 and distill.preserve_source is False  # the student is shallower
    full = config_from_parameters(data, tmp_path / "f", {**shared, "strategy": "full"})
    assert (full.teacher, full.student_layers, full.distill_alpha, full.preserve_source) == (None, None, 0.5, True)
    with pytest.raises(ConfigError, match="^teacher: strategy distill needs --teacher"):
        config_from_parameters(data, tmp_path / "x", {**defaults, "strategy": "distill"})
