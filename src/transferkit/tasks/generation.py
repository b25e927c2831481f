"""Generative tasks: summarization and instruction following by a causal language model (GPT-class base).

Data: ``source`` (the document or prompt), ``instruction`` (per row, fixed, or empty) and ``target`` (the
reference summary or response), prepared by :mod:`transferkit.data.pairs`; ``labels.json`` is empty. Training:
supervised fine-tuning with the loss on target tokens only (:mod:`transferkit.train.sft`); strategies ``full``,
``lora`` (adapter merged into a plain model directory, the unmerged adapter under ``adapter/``) and
``off_the_shelf`` (zero-shot). Evaluation: ROUGE-1/2/L and lengths against a lead and a zero-shot baseline
(:mod:`transferkit.evaluate.generation`). Export: ONNX with a KV cache through the ONNX Runtime GenAI model builder,
fp32 + int4, parity- and ROUGE-L-gated (:mod:`transferkit.export.generative`); served by a decoupled Triton
python-backend model that streams tokens (:mod:`transferkit.serve.generative`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from transferkit.errors import ConfigError, ExportError
from transferkit.tasks.base import Task

SUMMARIZATION = "summarization"
INSTRUCTION = "instruction"
# Options of the classification tasks that a generative task refuses when set.
_CLASSIFICATION_PREP_FIELDS = ("text_pair_column", "group_column")


class GenerativeTask(Task):
    """What summarization and instruction following share; subclasses name their columns."""

    modality: ClassVar[str] = "text"
    item_unit: ClassVar[str] = "seq"
    required_columns: ClassVar[tuple[str, ...]] = ("source", "instruction", "target")
    model_noun: ClassVar[str] = "a causal language model"
    classifier_noun: ClassVar[str] = "a generative model"
    preprocessing_kind: ClassVar[str] = "tokenizer"
    model_framework: ClassVar[str] = "transformers"
    export_variants: ClassVar[dict[str, tuple[str, ...]]] = {}
    export_cpu_preference: ClassVar[str] = "fp32"
    min_labels: ClassVar[int] = 0
    # DataPrepConfig fields naming the input and output columns, their defaults, and the other task's fields.
    input_field: ClassVar[str]
    output_field: ClassVar[str]
    input_default: ClassVar[str]
    output_default: ClassVar[str]
    foreign_fields: ClassVar[tuple[str, ...]]
    source_expected: ClassVar[str]
    target_expected: ClassVar[str]

    def owns_model_config(self, config: dict[str, Any]) -> bool:
        """A model directory fine-tuned by this task (``transferkit_task`` written into its ``config.json``)."""
        return config.get("transferkit_task") == self.name

    # ------------------------------------------------------------------------------------- data prep

    def check_prep_config(self, config: Any) -> None:
        """Refuse classification-only options and the other generative task's columns.

        Raises:
            ConfigError: Naming the option.

        """
        for name in (*_CLASSIFICATION_PREP_FIELDS, *self.foreign_fields):
            if getattr(config, name):
                raise ConfigError(f"{name}: not supported for task {self.name}; expected none")
        if config.instruction_column and config.instruction:
            raise ConfigError("instruction: a fixed instruction and instruction_column exclude each other; "
                              "give one")

    def _builtin_columns(self, config: Any) -> dict[str, str]:
        """A built-in pair set brings its own instruction and split columns."""
        from transferkit.data.builtin import is_builtin

        extra: dict[str, str] = {}
        if is_builtin(config.dataset):
            if not config.instruction_column and not config.instruction:
                extra["instruction"] = "instruction"
            if not config.split_column:
                extra["split"] = "split"
        return extra

    def prep_columns(self, config: Any) -> dict[str, str]:
        """``source``, ``target`` and the optional ``instruction`` and ``split`` columns."""
        roles = {"source": getattr(config, self.input_field) or self.input_default,
                 "target": getattr(config, self.output_field) or self.output_default,
                 "instruction": config.instruction_column, "split": config.split_column}
        roles.update(self._builtin_columns(config))
        return {role: column for role, column in roles.items() if column}

    def prepare(self, config: Any) -> Any:
        """Pairs: validate, split (own split column or seeded), leakage check, token statistics."""
        from transferkit.data.pairs import prepare_pairs

        return prepare_pairs(config, self)

    def pair_warnings(self, table: Any, rows: Callable[[Any], str]) -> list[str]:
        """Task-specific data warnings (none by default)."""
        return []

    def summary_rows(self, result: Any, config: Any) -> list[tuple[str, str]]:
        """Token-length percentiles of prompt + target and the truncation rate."""
        tokens = result.token_length
        return [("prompt + target tokens p50 / p95 / p99 / max",
                 f"{tokens['p50']:g} / {tokens['p95']:g} / {tokens['p99']:g} / {tokens['max']:g}"),
                (f"truncated at max_length={config.max_length}", f"{result.truncation_rate * 100:.2f}%")]

    # ------------------------------------------------------------------------------------- training

    def training(self, config: Any, dataset: Any, resolved: Any) -> Any:
        """Supervised fine-tuning of a causal LM on the pairs (loss on target tokens only)."""
        from transferkit.train.sft import sft_side_for

        return sft_side_for(config, dataset, resolved, self)

    # ------------------------------------------------------------------------------------- evaluation

    def evaluation_inputs(self, dataset: Any, split: str, cfg: Any) -> Any:
        """Not used: :meth:`evaluate` computes generation metrics itself."""
        raise ConfigError(f"task {self.name}: predictions are generated texts, not class probabilities")

    def evaluate(self, config: Any, dataset: Any) -> Any:
        """ROUGE and lengths of generated outputs, lead and zero-shot baselines, per-example HTML table."""
        from transferkit.evaluate.generation import evaluate_generation

        return evaluate_generation(config, dataset, self)

    def source_set(self, reference: str, dataset: Any, labels: list[str]) -> Any:
        """Not a source set: the forgetting check of a generative model is its perplexity on reference text."""
        raise ConfigError(f"{reference}: a {self.name} dataset is not a forgetting source set; the forgetting check "
                          "of a generative model measures perplexity on reference texts (default "
                          "builtin:lee-similarity)")

    def forgetting_language_model(self, probe: Any, model_dir: Any) -> Any:
        """The fine-tuned language model itself, with its own LM head (it is still a language model)."""
        return probe.as_language_model(model_dir)

    def unseen_task_probe(self, cfg: Any) -> dict[str, Any]:
        """Zero-shot title generation from aclsum abstracts, base vs fine-tuned (ROUGE-L; not gated)."""
        from transferkit.evaluate.forgetting_unseen import title_probe

        return title_probe(cfg.base, cfg.model, n_papers=cfg.unseen_task_papers, seed=cfg.seed,
                           progress=cfg.progress, allow_pickle=cfg.allow_pickle,
                           trust_remote_code=cfg.trust_remote_code)

    # ------------------------------------------------------------------------------------- export

    def export(self, config: Any, dataset: Any) -> Any:
        """ONNX Runtime GenAI export with parity and ROUGE-L gates (:mod:`transferkit.export.generative`)."""
        from transferkit.export.generative import export_generative

        return export_generative(config, dataset, self)

    def export_side(self, config: Any, dataset: Any) -> Any:
        """Not used: :meth:`export` builds generative exports with the ONNX Runtime GenAI builder."""
        raise ExportError(f"task {self.name}: export of generative models goes through the ONNX Runtime GenAI "
                          "path (Task.export), not the single-graph classification export")

    def report_parity(self, report: Any, result: Any, config: Any) -> None:
        """Not used (the generative export writes its own report)."""
        raise ExportError(f"task {self.name}: no export parity")

    # ------------------------------------------------------------------------------------- serving

    def owns_export(self, directory: Path) -> bool:
        """An export whose ``generation_spec.json`` names this task."""
        import json

        try:
            spec = json.loads((Path(directory) / "generation_spec.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(spec, dict) and spec.get("task") == self.name

    def served_export(self, directory: Path, variant: str | None) -> Any:
        """One decoupled python-backend model running the ONNX Runtime GenAI generator."""
        from transferkit.serve.generative_deploy import GenerativeExport

        return GenerativeExport.load(directory, variant)

    def sample_request(self, http_url: str, model_name: str, *, dataset_dir: Any, export_dir: Any, work_dir: Any,
                       sample_text: str) -> dict[str, Any]:
        """The first test pair's user message on ``generate_stream``: the streamed text, tokens, time to first token.

        Raises:
            ServingError: The run has no export, or the server refused the request or streamed nothing.
        """
        from transferkit.errors import ServingError
        from transferkit.serve.sample import stream_first_pair

        if export_dir is None:
            raise ServingError(f"task {self.name}: the run has no export to read the prompt format from")
        return stream_first_pair(http_url, model_name, dataset_dir, export_dir)



class Summarization(GenerativeTask):
    """A document in, its summary out (``--source-column`` / ``--target-column``)."""

    name: ClassVar[str] = SUMMARIZATION
    input_field: ClassVar[str] = "source_column"
    output_field: ClassVar[str] = "target_column"
    input_default: ClassVar[str] = "source"
    output_default: ClassVar[str] = "target"
    foreign_fields: ClassVar[tuple[str, ...]] = ("prompt_column", "response_column")
    source_expected: ClassVar[str] = "the document to summarize"
    target_expected: ClassVar[str] = "the reference summary"

    def pair_warnings(self, table: Any, rows: Callable[[Any], str]) -> list[str]:
        """Summaries with more words than their document."""
        import numpy as np
        import pyarrow.compute as pc

        def words(column: str) -> Any:
            return pc.list_value_length(pc.utf8_split_whitespace(table[column])).to_numpy(zero_copy_only=False)

        longer = np.flatnonzero(words("target") > words("source"))
        if not len(longer):
            return []
        return [f"{len(longer)} target(s) have more words than their source ({rows(longer)}); a summary is "
                "expected to be shorter"]


class Instruction(GenerativeTask):
    """A prompt in, the response out (``--prompt-column`` / ``--response-column``)."""

    name: ClassVar[str] = INSTRUCTION
    input_field: ClassVar[str] = "prompt_column"
    output_field: ClassVar[str] = "response_column"
    input_default: ClassVar[str] = "prompt"
    output_default: ClassVar[str] = "response"
    foreign_fields: ClassVar[tuple[str, ...]] = ("source_column", "target_column")
    source_expected: ClassVar[str] = "the prompt"
    target_expected: ClassVar[str] = "the reference response"


TASKS = (Summarization(), Instruction())
