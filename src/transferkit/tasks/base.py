"""The interface every task implements: what the steps ask a task instead of branching on it.

A task owns everything that differs between kinds of problem: the prepared-data contract and how data prep
builds it, the model recognised as its own, the training side (model building, freezing layout, datasets,
collator, feature cache, saving), the evaluation inputs and predictions, and the export side (graph inputs,
parity, calibration, accuracy gate, serving assets and the variants built per target). The steps (data prep,
fine-tune, evaluate, export, deploy) look a task up once with :func:`transferkit.tasks.get_task` and call it.

Heavy imports (torch, transformers, onnx) happen inside the methods, so looking a task up stays cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar


class Task(ABC):
    """One kind of problem transferkit can fine-tune, evaluate, export and serve.

    Class attributes:
        name: The identifier written to ``schema.json`` and passed as ``--task`` (``text-classification``).
        modality: The input kind named in reports and messages (``text``, ``image``).
        item_unit: Unit of throughput figures (``seq``, ``img``).
        required_columns: Columns every split of a prepared dataset of this task must have.
        model_noun: How a model of this task is named when it meets another task's data (``a text model``).
        classifier_noun: How the export step names a model of this task (``a text classifier``).
        wrong_model_hint: What to use instead when a model of another task meets this task's data (or None).
        preprocessing_kind: ``kind`` of the ``io_spec.json`` preprocessing of its exports (``tokenizer``).
        forgetting_mitigation: Whether ``--preserve-source`` applies (pipelines drop it for other tasks).
        model_framework: ``framework`` recorded in the model artifact's metadata (``transformers``).
        export_variants: Graph variants the export step builds per target, in build order.
        export_cpu_preference: The variant recommended on ``cpu`` when it passes the accuracy gate.
        export_assets: Serving files an export writes beside ``labels.json`` (``tokenizer/``).
        min_labels: Fewest label names ``labels.json`` must hold (0 for generative tasks, which have none).
        auto_max_length: Whether ``max_length auto`` is measured on the training split (data prep and training);
            otherwise data prep's ``auto`` takes 64 and training the catalog's length.
    """

    name: ClassVar[str]
    modality: ClassVar[str]
    item_unit: ClassVar[str]
    required_columns: ClassVar[tuple[str, ...]]
    model_noun: ClassVar[str]
    classifier_noun: ClassVar[str]
    wrong_model_hint: ClassVar[str | None] = None
    preprocessing_kind: ClassVar[str]
    forgetting_mitigation: ClassVar[bool] = False
    model_framework: ClassVar[str]
    export_variants: ClassVar[dict[str, tuple[str, ...]]]
    export_cpu_preference: ClassVar[str]
    export_assets: ClassVar[tuple[str, ...]] = ()
    min_labels: ClassVar[int] = 2
    auto_max_length: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ------------------------------------------------------------------------------------- identity

    @abstractmethod
    def owns_model_config(self, config: dict[str, Any]) -> bool:
        """Whether a model directory's ``config.json`` (already parsed) is a model of this task."""

    # ------------------------------------------------------------------------------------- data prep

    def check_prep_config(self, config: Any) -> None:  # noqa: B027 - optional hook
        """Reject data-prep options that do not apply to this task.

        Raises:
            ConfigError: Naming the option.
        """

    @abstractmethod
    def prep_columns(self, config: Any) -> dict[str, str]:
        """Role -> source column for the roles this task reads (``DataPrepConfig.columns``)."""

    @abstractmethod
    def prepare(self, config: Any) -> Any:
        """Run data prep for this task; return a :class:`~transferkit.data.prepare.DataPrepResult`."""

    @abstractmethod
    def summary_rows(self, result: Any, config: Any) -> list[tuple[str, str]]:
        """Task-specific rows of the ``transferkit data prepare`` summary table."""

    # ------------------------------------------------------------------------------------- training

    @abstractmethod
    def training(self, config: Any, dataset: Any, resolved: Any) -> Any:
        """Check the training options for this task, read the splits and return the task's training side.

        The side implements :class:`transferkit.train.side.TrainingSide`; the training recipe
        (:mod:`transferkit.train.run`) drives it.

        Raises:
            ConfigError: An option that does not apply to this task.
            PreparedDataError: A split with bad rows.
        """

    # ------------------------------------------------------------------------------------- evaluation

    @abstractmethod
    def evaluation_inputs(self, dataset: Any, split: str, cfg: Any) -> Any:
        """The rows of ``split`` the evaluate step predicts on (:class:`transferkit.evaluate.inputs.EvalInputs`).

        Raises:
            PreparedDataError: An empty split or a malformed row.
        """

    def evaluate(self, config: Any, dataset: Any) -> Any:
        """Evaluate with metrics of the task's own, or None for the shared classification evaluation.

        A task whose predictions are not class probabilities (generation) computes its metrics, writes
        ``metrics.json`` and the report into ``config.out_dir`` and returns the
        :class:`~transferkit.evaluate.evaluation.EvaluateResult`.
        """
        return None

    @abstractmethod
    def source_set(self, reference: str, dataset: Any, labels: list[str]) -> Any:
        """The test split of a prepared dataset as a forgetting-check source set."""

    def forgetting_language_model(self, probe: Any, model_dir: Path | str) -> Any:
        """What the perplexity forgetting check (decoder bases) measures for a fine-tuned model of this task.

        By default the fine-tuned backbone under the base model's LM head (a classifier has no LM head of its own).
        ``probe`` is the :class:`~transferkit.evaluate.forgetting_lm.PerplexityProbe`.
        """
        return probe.with_base_head(model_dir)

    def unseen_task_probe(self, cfg: Any) -> dict[str, Any]:
        """Zero-shot quality of the base and the fine-tuned model on a task neither was tuned for.

        ``cfg`` is the :class:`~transferkit.evaluate.forgetting.ForgettingConfig` (``unseen_task_papers``).

        Raises:
            ConfigError: The task has no unseen-task probe (only generative models answer free-form prompts).
        """
        from transferkit.errors import ConfigError

        raise ConfigError(f"unseen_task_papers: the unseen-task probe applies to generative models (summarization, "
                          f"instruction); {cfg.model} is {self.model_noun}")

    # ------------------------------------------------------------------------------------- export

    def export(self, config: Any, dataset: Any) -> Any:
        """Export with a path of the task's own, or None for the shared classification export.

        A task whose model is not one forward pass (generation: a decoding loop with a KV cache) builds,
        gates and reports its export into ``config.out_dir`` and returns its result.
        """
        return None

    @abstractmethod
    def export_side(self, config: Any, dataset: Any) -> Any:
        """Load the model for export and wrap it with what the export step needs from this task.

        Raises:
            ModelError: The model does not load.
            ExportError: Unsupported architecture or labels that differ from the dataset's.
        """

    @abstractmethod
    def report_parity(self, report: Any, result: Any, config: Any) -> None:
        """Add the parity-gate paragraph and table of an :class:`~transferkit.export.config.ExportResult`."""

    # ------------------------------------------------------------------------------------- serving

    def owns_export(self, directory: Path) -> bool:
        """Whether ``directory`` is an export of this task served by :meth:`served_export` (not ``io_spec.json``)."""
        return False

    def served_export(self, directory: Path, variant: str | None) -> Any:
        """The export as the deploy step serves it, or None for the shared classification repository.

        A task whose export is not one ONNX graph behind an ensemble (generation: a decoupled python-backend
        model) returns an object with ``kind``, ``variant``, ``directory``, ``format_version``,
        ``model_names(name)``, ``endpoint(url, name)``, ``write_tree(name, root, version, options)`` and
        ``smoke_test(url, name, version, prompts)`` (see :mod:`transferkit.serve.generative_deploy`).

        Raises:
            ServingError: The export directory is incomplete.
        """
        return None

    def sample_request(self, http_url: str, model_name: str, *, dataset_dir: Path | None, export_dir: Path | None,
                       work_dir: Path, sample_text: str) -> dict[str, Any]:
        """Ask a deployed model of this task for one answer (what a local pipeline run shows at its end).

        Args:
            http_url: The Triton HTTP URL.
            model_name: The deployed model (or ensemble).
            dataset_dir: The run's prepared dataset (a sample input may come from its test split).
            export_dir: The run's export (the generation spec of a generative model).
            work_dir: Where a sample input may be saved for the user to look at.
            sample_text: The sentence sent to a text model.

        Returns:
            The request and the answer (JSON-friendly; ``input`` always names what was sent).

        Raises:
            ServingError: The task has no sample request, or the server refused it.
        """
        from transferkit.errors import ServingError

        raise ServingError(f"task {self.name}: no sample request for a deployed model of this task")

    # ------------------------------------------------------------------------------------- monitoring

    def monitor_items(self, dataset: Any, split: str) -> list[Any]:
        """Raw inputs of ``split`` as a client sends them to the server (baseline and replay).

        Raises:
            MonitorError: The task has no drift monitoring.
        """
        from transferkit.errors import MonitorError

        raise MonitorError(f"task {self.name}: drift monitoring is not available for this task")

    def monitor_inputs(self, export_dir: Path | str) -> Any:
        """The served preprocessing of an export: ``batches(items)`` yields ``(graph feed, input features)``.

        The features (``features`` attribute: names of per-item scalars such as token length) are what the
        monitor tests for input drift beside the pooled embedding; the serving side reports the same ones.

        Raises:
            MonitorError: The task has no drift monitoring, or the export lacks its preprocessing files.
        """
        from transferkit.errors import MonitorError

        raise MonitorError(f"task {self.name}: drift monitoring is not available for this task")

    def write_serving_monitor(self, exported: Any, name: str, root: Path, version: int, options: Any) -> bool:
        """Add what samples served traffic to the monitor to a deployment's model tree (``monitor_sample_rate`` > 0).

        Called by the repository builder after it wrote every model of deployment ``name``. A task whose local
        serving path already samples (text: the fast path of ``serve/local_text.py``) or that has no drift
        monitoring writes nothing.

        Returns:
            Whether anything was written.
        """
        return False

    def describe_model(self, path: Path | str) -> str:
        """``Text model PATH``, ``Image model PATH``: how reports introduce a model of this task."""
        return f"{self.modality.capitalize()} model {path}"
