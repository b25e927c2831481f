"""Text classification: one label per text (or text pair), a sequence classifier on token ids.

Data: ``text`` (and optional ``text_pair``, ``group``) with an integer ``label`` into ``labels.json``. Models:
``AutoModelForSequenceClassification`` (any transformers directory that no other task claims). Export:
int64 token-id inputs and a ``tokenizer/`` for serving; dynamic int8 on cpu.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transferkit.tasks.base import Task

TEXT_CLASSIFICATION = "text-classification"


class TextClassification(Task):
    """Sequence classification of texts and text pairs."""

    name: ClassVar[str] = TEXT_CLASSIFICATION
    modality: ClassVar[str] = "text"
    item_unit: ClassVar[str] = "seq"
    required_columns: ClassVar[tuple[str, ...]] = ("text", "label")
    model_noun: ClassVar[str] = "a text model"
    classifier_noun: ClassVar[str] = "a text classifier"
    preprocessing_kind: ClassVar[str] = "tokenizer"
    wrong_model_hint: ClassVar[str | None] = None
    forgetting_mitigation: ClassVar[bool] = True
    model_framework: ClassVar[str] = "transformers"
    export_variants: ClassVar[dict[str, tuple[str, ...]]] = {"cpu": ("int8",), "gpu": ("fp16", "qdq")}
    export_cpu_preference: ClassVar[str] = "int8"
    export_assets: ClassVar[tuple[str, ...]] = ("tokenizer/",)
    auto_max_length: ClassVar[bool] = True

    def owns_model_config(self, config: dict[str, Any]) -> bool:
        """Any transformers config: text classification is the fallback for models no other task claims."""
        return True

    def check_prep_config(self, config: Any) -> None:
        """The generative tasks' options (source/target, prompt/response, instruction) do not apply."""
        from transferkit.data.prepare import GENERATIVE_PREP_FIELDS
        from transferkit.errors import ConfigError

        for name in GENERATIVE_PREP_FIELDS:
            if getattr(config, name):
                raise ConfigError(f"{name}: not supported for task {self.name}; expected none (it applies to "
                                  "--task summarization or instruction)")

    def prep_columns(self, config: Any) -> dict[str, str]:
        """``text``, ``label`` and whichever of ``text_pair``, ``group`` and ``split`` are configured."""
        roles = {"text": config.text_column, "text_pair": config.text_pair_column, "label": config.label_column,
                 "group": config.group_column, "split": config.split_column}
        return {role: column for role, column in roles.items() if column}

    def prepare(self, config: Any) -> Any:
        """Stream, validate, split and profile (token statistics with the configured model's tokenizer)."""
        from transferkit.data.prepare import prepare_texts

        return prepare_texts(config)

    def summary_rows(self, result: Any, config: Any) -> list[tuple[str, str]]:
        """Token-length percentiles and the truncation rate."""
        tokens = result.token_length
        long_documents = result.long_documents
        kept = long_documents.get("kept_fraction", {})
        rows = [("tokens p50 / p95 / p99 / max",
                 f"{tokens['p50']:g} / {tokens['p95']:g} / {tokens['p99']:g} / {tokens['max']:g}"),
                (f"truncated at max_length={long_documents.get('max_length', config.max_length)}"
                 + (" (auto)" if long_documents.get("max_length_source") == "auto" else ""),
                 f"{result.truncation_rate * 100:.2f}%")]
        if kept:
            rows.append(("tokens seen per document: head|tail|head_tail / chunk",
                         f"{kept['head'] * 100:.1f}% / {kept['chunk'] * 100:.0f}% "
                         f"({long_documents['chunk_windows']['mean']:g} windows on average)"))
        return rows

    def training(self, config: Any, dataset: Any, resolved: Any) -> Any:
        """The text side of the training recipe (tokenizer, sequence classifier, pooling, zero-shot)."""
        from transferkit.train.config import reject_generation_options
        from transferkit.train.text_side import text_side_for

        reject_generation_options(config, self.name)
        return text_side_for(config, dataset, resolved)

    def evaluation_inputs(self, dataset: Any, split: str, cfg: Any) -> Any:
        """Texts (and pairs) of the split; predictions by the classifier or zero-shot for a baseline."""
        from transferkit.evaluate.inputs import TextInputs

        return TextInputs.read(dataset, split, cfg)

    def source_set(self, reference: str, dataset: Any, labels: list[str]) -> Any:
        """Labelled test texts."""
        from transferkit.evaluate.sources import SourceSet

        return SourceSet(reference, "labelled", dataset.texts("test"), labels=labels)

    def export_side(self, config: Any, dataset: Any) -> Any:
        """Load the classifier and tokenizer; resolve ``max_length``."""
        from transferkit.export.onnx_export import load_exportable, resolve_max_length
        from transferkit.export.tasks import TextTask

        exportable = load_exportable(config.model_dir, dataset.labels, config.data_dir,
                                     allow_pickle=config.allow_pickle, trust_remote_code=config.trust_remote_code)
        return TextTask(exportable, dataset, config, resolve_max_length(config.max_length, exportable))

    def report_parity(self, report: Any, result: Any, config: Any) -> None:
        """Parity over batch sizes, sequence lengths and padding."""
        report.paragraph(
            f"All shapes within atol {config.atol:g} with identical predicted labels; largest difference "
            f"{result.parity_max_abs_diff:.3g}. Opset {result.opset}, max_length {result.max_length}."
        )
        report.table(
            ["batch", "seq len", "padding", "max abs logit diff", "labels agree"],
            [[c.batch_size, c.seq_len, c.padding, f"{c.max_abs_diff:.3g}", c.labels_agree]
             for c in result.parity_cases],
        )

    def sample_request(self, http_url: str, model_name: str, *, dataset_dir: Any, export_dir: Any, work_dir: Any,
                       sample_text: str) -> dict[str, Any]:
        """The sentence ``sample_text`` on the ensemble's ``infer``: its label and probabilities."""
        from transferkit.serve.sample import classify

        return classify(http_url, model_name, text=sample_text)

    def monitor_items(self, dataset: Any, split: str) -> list[Any]:
        """Texts, or ``(text, text_pair)`` tuples for pair datasets."""
        texts, pairs = dataset.texts(split), dataset.text_pairs(split)
        return list(zip(texts, pairs, strict=True)) if pairs is not None else list(texts)

    def monitor_inputs(self, export_dir: Any) -> Any:
        """The exported ``tokenizer.json``; features token length and unknown-token rate."""
        from transferkit.monitor.inputs import TextMonitorInputs

        return TextMonitorInputs(export_dir)


TASK = TextClassification()
