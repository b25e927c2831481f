"""A third task registered from the tests alone: classification of numeric feature vectors by a small MLP.

It proves the task architecture (``src/transferkit/tasks/README.md``): this one module supplies data prep,
the training side, evaluation inputs and the export side, and ``transferkit data prepare``, ``train``,
``evaluate`` and ``export`` run it without a line of task-specific code in the steps.

Data: a CSV whose ``label`` column holds class names and every other column a numeric feature. Model: a
directory with ``config.json`` (``transferkit_architecture: toy-mlp``, layer sizes) and ``model.safetensors``.
"""

from __future__ import annotations

import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa

from transferkit.errors import ConfigError, DataError, ModelError, PreparedDataError, SchemaError
from transferkit.export.config import ParityCase
from transferkit.export.io_spec import TensorSpec
from transferkit.io import write_json
from transferkit.tasks.base import Task
from transferkit.train.side import TrainingSide

NAME = "toy-tabular-classification"
ARCHITECTURE = "toy-mlp"
FEATURES = "features"
BATCHES = (1, 3, 8)


# ----------------------------------------------------------------------------------------------- the model

def build_mlp(config: dict[str, Any]) -> Any:
    """The MLP of a ``config.json``: ``in -> hidden (ReLU) -> ... -> num_labels``."""
    import torch
    from torch import nn
    from transformers.modeling_outputs import SequenceClassifierOutput

    class ToyMLP(nn.Module):
        def __init__(self, sizes: list[int], num_labels: int) -> None:
            super().__init__()
            self.body = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
            self.head = nn.Linear(sizes[-1], num_labels)

        def forward(self, features: torch.Tensor, labels: Any = None) -> Any:
            hidden = features
            for layer in self.body:
                hidden = torch.relu(layer(hidden))
            return SequenceClassifierOutput(logits=self.head(hidden))

    return ToyMLP([int(config["num_features"]), *map(int, config["hidden_sizes"])], int(config["num_labels"]))


def save_mlp(model: Any, directory: Path, num_features: int, hidden_sizes: list[int], labels: list[str]) -> None:
    """Write ``config.json``, ``model.safetensors`` and ``labels.json``."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / "config.json", {
        "transferkit_architecture": ARCHITECTURE, "num_features": num_features, "hidden_sizes": hidden_sizes,
        "num_labels": len(labels), "id2label": dict(enumerate(labels)),
    })
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(directory / "model.safetensors"))
    write_json(directory / "labels.json", list(labels))


def load_mlp(directory: Path, num_labels: int | None = None) -> tuple[Any, dict[str, Any]]:
    """The saved MLP; with ``num_labels`` a new randomly initialised head of that size replaces the old one."""
    from safetensors.torch import load_file
    from torch import nn

    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    model = build_mlp(config)
    model.load_state_dict(load_file(str(directory / "model.safetensors")))
    if num_labels is not None:
        model.head = nn.Linear(model.head.in_features, num_labels)
        config = {**config, "num_labels": num_labels}
    return model, config


def _logits(model: Any, features: np.ndarray) -> np.ndarray:
    import torch

    model.eval()
    with torch.inference_mode():
        return model(torch.from_numpy(features)).logits.numpy()


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def read_features(dataset: Any, split: str) -> tuple[np.ndarray, list[int]]:
    """Feature matrix and label ids of a split.

    Raises:
        PreparedDataError: An empty split or rows of different widths.

    """
    where = dataset.path / f"{split}.parquet"
    table = dataset.table(split)
    if table.num_rows == 0:
        raise PreparedDataError(f"{where}: split {split!r} is empty")
    rows = table.column(FEATURES).to_pylist()
    width = len(rows[0])
    for index, row in enumerate(rows):
        if len(row) != width:
            raise PreparedDataError(f"{where}: row {index}: {len(row)} features, expected {width}")
    return np.asarray(rows, dtype=np.float32), [int(v) for v in table.column("label").to_pylist()]


# ----------------------------------------------------------------------------------------------- training

@dataclass(frozen=True)
class MLPLayout:
    """Body layers from the input upwards, then the head: what LLRD, L2-SP and unfreezing work by."""

    num_layers: int

    def classify(self, name: str) -> tuple[str, int | None]:
        """``("layer", i)`` for ``body.i.*``, else ``("head", None)``."""
        if name.startswith("body."):
            return "layer", int(name.split(".")[1])
        return "head", None


class FeatureRows:
    """Map-style dataset of ``{"features", "labels"}``."""

    augment = "none"
    lengths = None

    def __init__(self, features: np.ndarray, labels: list[int]) -> None:
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {FEATURES: self.features[index], "labels": self.labels[index]}


@dataclass
class Split:
    """Features and label ids of one split (``labels`` is what the recipe reads)."""

    features: np.ndarray
    labels: list[int]


class MLPSide(TrainingSide):
    """The toy task's side of the training recipe."""

    def __init__(self, config: Any, resolved: Any, hp: dict[str, Any], train: Split, validation: Split) -> None:
        self.config, self.resolved, self.hp = config, resolved, hp
        self.train_split, self.validation_split = train, validation

    def identity(self) -> dict[str, Any]:
        """Nothing beyond the shared identity."""
        return {}

    def build_model(self, ctx: Any) -> Any:
        """The base MLP with a new head (every layer re-initialised for ``scratch``)."""
        import torch

        torch.manual_seed(self.config.seed)
        model, _ = load_mlp(Path(self.resolved.path), len(ctx.labels))
        if self.config.strategy == "scratch":
            for module in model.modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        return model.train()

    def freeze(self, model: Any, strategy: str, unfreeze_top_layers: int) -> dict[str, Any]:
        """feature_extraction trains the head and the top ``unfreeze_top_layers`` body layers."""
        layout = MLPLayout(len(model.body))
        first = layout.num_layers - unfreeze_top_layers if strategy == "feature_extraction" else 0
        for name, parameter in model.named_parameters():
            kind, index = layout.classify(name)
            parameter.requires_grad = kind == "head" or (index is not None and index >= first)
        return {"layout": layout, "trainable_layers": list(range(first, layout.num_layers)),
                "base_frozen": first == layout.num_layers}

    def datasets(self, ctx: Any) -> tuple[Any, Any]:
        """Feature rows of the training and validation splits."""
        return (FeatureRows(self.train_split.features, self.train_split.labels),
                FeatureRows(self.validation_split.features, self.validation_split.labels))

    def supports_feature_cache(self, model: Any) -> bool:
        """The MLP is cheap enough to run whole."""
        return False

    def cached_features(self, model: Any, ctx: Any, datasets: dict[str, Any]) -> tuple[dict[str, Any], str, bool]:
        """Not used (see :meth:`supports_feature_cache`)."""
        raise ModelError("toy-mlp: no feature cache")

    def head_model(self, model: Any) -> Any:
        """Not used (see :meth:`supports_feature_cache`)."""
        raise ModelError("toy-mlp: no feature cache")

    def collator(self, device: str) -> Any:
        """Fixed-width rows stack as they are."""
        from transformers import default_data_collator

        return default_data_collator

    def off_the_shelf(self, ctx: Any) -> tuple[Any, dict[str, Any]]:
        """A random base has nothing to offer untrained."""
        raise ModelError(f"{self.resolved.reference}: toy-mlp has no off-the-shelf head; use full")

    def validation_metrics(self, ctx: Any, model_dir: Path, model: Any = None) -> dict[str, float]:
        """Accuracy, macro F1 and loss on the validation rows."""
        from transferkit.train.side import probability_metrics

        if model is None:
            model, _ = load_mlp(model_dir)
        probs = _softmax(_logits(model, self.validation_split.features))
        return probability_metrics(probs, self.validation_split.labels)

    def save(self, directory: Path, model: Any, labels: list[str]) -> None:
        """The model directory: config, weights, labels."""
        sizes = [layer.out_features for layer in model.body]
        save_mlp(model.cpu(), directory, model.body[0].in_features, sizes, labels)


# ----------------------------------------------------------------------------------------------- evaluation

def evaluation_inputs(dataset: Any, split: str) -> Any:
    """Feature rows of ``split`` predicted by the saved MLP."""
    from transferkit.evaluate.inputs import EvalInputs, Prediction

    class MLPInputs(EvalInputs):
        @property
        def n_examples(self) -> int:
            return len(self.labels)

        def predict(self, ref: str | Path, cfg: Any, *, role: str = "model") -> Prediction:
            model, config = load_mlp(Path(ref))
            labels = [config["id2label"][str(i)] for i in range(int(config["num_labels"]))]
            y_true = np.asarray([labels.index(self.dataset.labels[i]) for i in self.labels])
            return Prediction(y_true, _softmax(_logits(model, self.features)), labels, "classifier")

    inputs = MLPInputs(dataset, split)
    inputs.features, inputs.labels = read_features(dataset, split)
    return inputs


# ----------------------------------------------------------------------------------------------- export

class MLPExport:
    """The export side: one float input ``features [batch, n]``, no preprocessing assets."""

    task = NAME
    item_unit = "row"
    max_length = None
    model_type = ARCHITECTURE

    def __init__(self, config: Any, dataset: Any) -> None:
        self.config, self.dataset = config, dataset
        self.model, model_config = load_mlp(Path(config.model_dir))
        self.labels = [model_config["id2label"][str(i)] for i in range(int(model_config["num_labels"]))]
        if self.labels != list(dataset.labels):
            raise ModelError(f"{config.model_dir}: labels {self.labels} differ from the dataset's {dataset.labels}")
        self.model_path = Path(config.model_dir)
        self.width = int(model_config["num_features"])
        self.input_shape = [-1, self.width]

    def describe(self) -> str:
        """Short description for logs."""
        return f"{ARCHITECTURE}, input {FEATURES} {self.input_shape}"

    def inputs(self) -> list[TensorSpec]:
        """The one graph input."""
        return [TensorSpec(FEATURES, "float32", self.input_shape)]

    def _rows(self, split: str, limit: int | None = None) -> np.ndarray:
        return read_features(self.dataset, split)[0][:limit]

    def export(self, path: Path, opset: int, target: str) -> dict[str, int]:
        """``torch.onnx.export`` with a dynamic batch axis."""
        import torch

        sample = torch.from_numpy(self._rows("validation", 2))
        torch.onnx.export(self.model.eval(), (sample,), str(path), input_names=[FEATURES], output_names=["logits"],
                          dynamic_axes={FEATURES: {0: "batch"}, "logits": {0: "batch"}}, opset_version=opset,
                          dynamo=False)
        return {}

    def parity(self, session: Any, atol: float) -> list[ParityCase]:
        """PyTorch vs ONNX Runtime on validation rows, several batch sizes."""
        rows = self._rows("validation")
        cases = []
        for batch in BATCHES:
            feed = rows[np.arange(batch) % len(rows)]
            expected = _logits(self.model, feed)
            actual = session.run(None, {FEATURES: feed})[0]
            diff = float(np.abs(expected - actual).max())
            cases.append(ParityCase(batch, 0, "none", diff, bool((expected.argmax(1) == actual.argmax(1)).all()),
                                    input_shape=list(feed.shape)))
        return cases

    def qdq_options(self, target: str) -> dict[str, Any]:
        """Every supported op, symmetric activations on gpu."""
        return {"op_types": None, "symmetric_activations": target == "gpu", "keep_input_layers_float": False}

    def calibration_feeds(self) -> list[dict[str, np.ndarray]]:
        """Training rows in batches of 8."""
        rows = self._rows("train", self.config.calibration_size)
        return [{FEATURES: rows[i : i + 8]} for i in range(0, len(rows), 8)]

    def test_labels(self) -> np.ndarray:
        """Label ids of the accuracy-gate rows."""
        return np.asarray(read_features(self.dataset, "test")[1][: self.config.max_eval_samples])

    def test_logits(self, session: Any) -> np.ndarray:
        """Logits of ``session`` on the accuracy-gate rows."""
        return session.run(None, {FEATURES: self._rows("test", self.config.max_eval_samples)})[0]

    def agreement_sample(self, sessions: dict[str, Any], size: int) -> dict[str, Any]:
        """The first ``size`` validation rows with each session's labels."""
        rows = self._rows("validation", size)
        logits = {name: session.run(None, {FEATURES: rows})[0] for name, session in sessions.items()}
        names = {name: [self.labels[i] for i in values.argmax(1)] for name, values in logits.items()}
        return {"format_version": 1, "inputs": rows.tolist(), "pairs": None, "labels": names["fp32"],
                "logits": np.round(logits["fp32"].astype(np.float64), 6).tolist(),
                "variant_labels": {k: v for k, v in names.items() if k != "fp32"}}

    def speed_feeds(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Batch-1 and batch-N validation rows."""
        rows = self._rows("validation")
        batch = rows[np.arange(self.config.throughput_batch_size) % len(rows)]
        return {FEATURES: batch[:1]}, {FEATURES: batch}

    def speed_note(self) -> str:
        """How the speed inputs were built."""
        return "validation feature rows"

    def write_assets(self, directory: Path) -> dict[str, Any]:
        """No preprocessing: the served model reads the feature vector as is."""
        return {"tokenizer_dir": None, "tokenizer_files": [], "max_length": None,
                "preprocessing": {"features": self.width}}


# ----------------------------------------------------------------------------------------------- the task

class TabularClassification(Task):
    """Numeric feature vectors, one class each, classified by an MLP."""

    name: ClassVar[str] = NAME
    modality: ClassVar[str] = "tabular"
    item_unit: ClassVar[str] = "row"
    required_columns: ClassVar[tuple[str, ...]] = (FEATURES, "label")
    model_noun: ClassVar[str] = "a tabular model"
    classifier_noun: ClassVar[str] = "a tabular classifier"
    preprocessing_kind: ClassVar[str] = "none"
    model_framework: ClassVar[str] = "pytorch"
    export_variants: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("int8",), "gpu": ("fp16", "qdq")}
    export_cpu_preference: ClassVar[str] = "int8"

    def owns_model_config(self, config: dict[str, Any]) -> bool:
        """Directories written by :func:`save_mlp`."""
        return config.get("transferkit_architecture") == ARCHITECTURE

    def check_prep_config(self, config: Any) -> None:
        """Only the label column and the split fractions apply."""
        for name in ("text_pair_column", "group_column", "split_column"):
            if getattr(config, name):
                raise ConfigError(f"{name}: not supported for task {self.name}; expected none")

    def prep_columns(self, config: Any) -> dict[str, str]:
        """The label column (every other column is a feature)."""
        return {"label": config.label_column}

    def prepare(self, config: Any) -> Any:
        """Read the CSV, check the features are numbers, split stratified, write the prepared contract."""
        import pyarrow.compute as pc
        import pyarrow.csv as pacsv

        from transferkit.data import splits
        from transferkit.data.prepare import split_metrics, write_prepared
        from transferkit.data.prepared import SPLITS
        from transferkit.reporting import Report

        started = time.perf_counter()
        table = pacsv.read_csv(config.dataset)
        if config.label_column not in table.column_names:
            raise SchemaError(f"{config.dataset}: no {config.label_column!r} column")
        feature_columns = [c for c in table.column_names if c != config.label_column]
        for column in feature_columns:
            if not pa.types.is_integer(table.schema.field(column).type) and not pa.types.is_floating(
                    table.schema.field(column).type):
                raise SchemaError(f"{config.dataset}: column {column!r}: expected numbers, got "
                                  f"{table.schema.field(column).type}")
        labels = pc.cast(table.column(config.label_column), pa.string())
        names = sorted(set(labels.to_pylist()))
        if len(names) < 2:
            raise DataError(f"{config.dataset}: column {config.label_column!r}: expected at least 2 classes")
        ids = np.asarray([names.index(v) for v in labels.to_pylist()])
        features = np.column_stack([table.column(c).to_numpy().astype(np.float32) for c in feature_columns])
        indices = splits.stratified_split(ids, len(names), config.validation_fraction, config.test_fraction,
                                          config.seed, config.dataset)
        full = pa.table({FEATURES: pa.array(features.tolist(), pa.list_(pa.float32())),
                         "label": pa.array(ids, pa.int64()),
                         "label_name": pa.array([names[i] for i in ids], pa.string())})
        tables = {split: full.take(pa.array(indices[split])) for split in SPLITS}
        rows = {split: tables[split].num_rows for split in SPLITS}
        counts = np.bincount(ids, minlength=len(names))
        stats = {"rows": rows, "labels": names, "warnings": [], "features": len(feature_columns),
                 "source_rows": table.num_rows, "num_labels": len(names), "duplicates_removed": {"total": 0},
                 "imbalance_ratio": float(counts.max() / counts.min())}
        report = Report(f"Data prep: {config.dataset}")
        report.table(["split", "rows"], [[split, n] for split, n in rows.items()])
        schema = {"format_version": 1, "task": self.name, "source": config.dataset, "feature_columns": feature_columns,
                  "columns": {f.name: str(f.type) for f in full.schema}, "num_labels": len(names), "seed": config.seed}
        return write_prepared(config, tables, names, schema, stats, report, started, table.num_rows, 0,
                              unit="rows", metrics=split_metrics(stats))

    def summary_rows(self, result: Any, config: Any) -> list[tuple[str, str]]:
        """The feature count."""
        schema = json.loads(result.schema_path.read_text(encoding="utf-8"))
        return [("features", str(len(schema["feature_columns"])))]

    def training(self, config: Any, dataset: Any, resolved: Any) -> Any:
        """Read the splits; refuse the text and image options."""
        from transferkit.train.side import resolve_hyperparameters

        for name, default in {"max_length": None, "image_size": None, "augment": "none"}.items():
            if getattr(config, name) != default:
                raise ConfigError(f"{name}: does not apply to task {self.name}")
        hp = resolve_hyperparameters(config, resolved.entry, model_limit=1 << 30)
        train, validation = (Split(*read_features(dataset, split)) for split in ("train", "validation"))
        return MLPSide(config, resolved, hp, train, validation)

    def evaluation_inputs(self, dataset: Any, split: str, cfg: Any) -> Any:
        """Feature rows of the split."""
        return evaluation_inputs(dataset, split)

    def source_set(self, reference: str, dataset: Any, labels: list[str]) -> Any:
        """No forgetting probe for a toy."""
        raise DataError(f"{self.name}: no forgetting source set")

    def export_side(self, config: Any, dataset: Any) -> Any:
        """The saved MLP behind the export interface."""
        return MLPExport(config, dataset)

    def report_parity(self, report: Any, result: Any, config: Any) -> None:
        """Parity over batch sizes."""
        report.table(["batch", "max abs logit diff", "labels agree"],
                     [[c.batch_size, f"{c.max_abs_diff:.3g}", c.labels_agree] for c in result.parity_cases])


TASK = TabularClassification()
