"""Supervised fine-tuning of a causal language model on (instruction, source, target) pairs.

The training side of the generative tasks (:mod:`transferkit.tasks.generation`): each example is the prompt
(chat template applied when the tokenizer has one, :mod:`transferkit.data.prompts`) followed by the target and
EOS; the labels are the target tokens with every prompt and padding token masked (-100), so the loss covers
the target only. No packing: one example per row. An encoder-decoder base (``is_encoder_decoder`` in its
config, e.g. T5) is trained as ``AutoModelForSeq2SeqLM`` instead: the prompt is the encoder input and the
labels are the target. The model computes its own loss from ``labels``; validation reports the loss and the
perplexity of the targets.
The generation settings are saved with the model in ``generation_config.json``.

Strategy ``lora`` (the recipe's :mod:`transferkit.train.lora`) adapts the attention projections of the frozen
model; the LM head (tied to the input embeddings in most decoders) stays frozen, so only the adapter trains.
The adapter is merged into a plain model directory (what evaluate, forgetting and export load) and also saved
unmerged in peft's format under ``adapter/`` (``task_type`` ``CAUSAL_LM`` or ``SEQ_2_SEQ_LM``) for serving
adapters on a shared base.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from transferkit.data.long_text import auto_max_length, auto_sample_rows
from transferkit.errors import ConfigError, ModelError, PreparedDataError, TrainingError
from transferkit.io import write_json
from transferkit.train.side import TrainingSide, resolve_hyperparameters

logger = logging.getLogger(__name__)
# An unset max_length is the p95 of the training examples' lengths, at most this (memory grows with length).
MAX_AUTO_LENGTH = 1024
# Strategies that do not apply to a generative model, with the reason given to the user.
REFUSED_STRATEGIES = {
    "feature_extraction": "a language model has no separate head to train on frozen features; use full (or "
                          "off_the_shelf for zero-shot)",
    "scratch": "a language model from random weights cannot learn to generate text from a few thousand pairs; use "
               "full (or off_the_shelf for zero-shot)",
    "distill": "the student is cut from an encoder's layers and learns a classifier's logits; use full or lora",
}
# TrainConfig options of the classification tasks, with the value meaning "not used".
CLASSIFICATION_OPTIONS = {"augment": "none", "image_size": None, "pooling": "auto", "label_descriptions": None,
                          "class_weights": "none", "unfreeze_top_layers": 0, "truncation": "head",
                          "long_documents": "truncate", "stride": None, "aggregation": "mean"}
LOSS_METRIC = "loss"
# Architectures (config.json) of causal language models: LlamaForCausalLM, GPT2LMHeadModel...
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")
# Rows per forward pass when measuring validation loss outside the Trainer.
EVAL_BATCH = 8


@dataclass
class PairSplit:
    """The pairs of one split; ``labels`` (what the shared recipe counts) are the targets."""

    instructions: list[str]
    sources: list[str]
    labels: list[str]


def read_pairs(dataset: Any, split: str) -> PairSplit:
    """Read one split of a prepared pair dataset.

    Raises:
        PreparedDataError: An empty split, or an empty source or target (naming the file and row).

    """
    table = dataset.table(split)
    where = dataset.path / f"{split}.parquet"
    if table.num_rows == 0:
        raise PreparedDataError(f"{where}: split {split!r} is empty")
    columns = {name: table.column(name).to_pylist() for name in ("instruction", "source", "target")}
    for name in ("source", "target"):
        for index, value in enumerate(columns[name]):
            if not value or not str(value).strip():
                raise PreparedDataError(f"{where}: row {index + 1}: empty {name!r}")
    return PairSplit([v or "" for v in columns["instruction"]], columns["source"], columns["target"])


def generation_settings(config: Any, tokenizer: Any) -> dict[str, Any]:
    """``GenerationConfig`` arguments of the configured decoding (greedy, beam or seeded sampling)."""
    settings: dict[str, Any] = {"max_new_tokens": config.max_new_tokens,
                                "repetition_penalty": config.repetition_penalty,
                                "pad_token_id": tokenizer.pad_token_id,
                                # Targets end with EOS, or SEP for tokenizers without one (data.prompts.target_ids).
                                "eos_token_id": tokenizer.eos_token_id if tokenizer.eos_token_id is not None
                                else tokenizer.sep_token_id,
                                "do_sample": config.decoding == "sampling",
                                "num_beams": config.num_beams if config.decoding == "beam" else 1}
    if config.decoding == "sampling":
        settings.update(temperature=config.temperature, top_p=config.top_p)
    return settings


def check_generator(config: dict[str, Any], path: Path | str, task_name: str) -> None:
    """Refuse a model whose ``config.json`` is neither a causal LM nor an encoder-decoder (BERT, classifiers).

    Raises:
        ModelError: Naming the architecture.

    """
    architectures = config.get("architectures") or []
    if architectures and not config.get("is_encoder_decoder") and \
            not any(str(a).endswith(CAUSAL_LM_SUFFIXES) for a in architectures):
        raise ModelError(f"{path}: {', '.join(map(str, architectures))} is not a causal language model; task "
                         f"{task_name} needs a GPT-class base (*ForCausalLM) or an encoder-decoder (seq2seq) one")


def load_generator(path: Path | str, *, allow_pickle: bool = False, trust_remote_code: bool = False) -> Any:
    """``AutoModelForSeq2SeqLM`` for an encoder-decoder directory, else ``AutoModelForCausalLM``.

    Raises:
        ModelError: The model does not load.

    """
    import json

    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    try:
        config = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    auto = AutoModelForSeq2SeqLM if config.get("is_encoder_decoder") else AutoModelForCausalLM
    try:
        return auto.from_pretrained(path, use_safetensors=not allow_pickle, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        kind = "a seq2seq" if auto is AutoModelForSeq2SeqLM else "a causal"
        raise ModelError(f"{path}: cannot load as {kind} language model ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0]})") from exc


def sft_side_for(config: Any, dataset: Any, resolved: Any, task: Any) -> SFTSide:
    """Check the options for a generative task, read the splits, load the tokenizer.

    Raises:
        ConfigError: A refused strategy or a classification option (one line, with the reason).
        PreparedDataError: A split with bad rows.
        ModelError: Not a causal language model, or the tokenizer does not load.

    """
    from transformers import AutoConfig

    from transferkit.models.loading import load_tokenizer
    from transferkit.train.modeling import model_max_length

    if config.strategy in REFUSED_STRATEGIES:
        raise ConfigError(f"strategy: {config.strategy} does not apply to task {task.name}: "
                          f"{REFUSED_STRATEGIES[config.strategy]}")
    for name, unused in CLASSIFICATION_OPTIONS.items():
        if getattr(config, name) != unused:
            raise ConfigError(f"{name}: applies to classification; the data in {dataset.path} is for {task.name}")
    if config.metric == "f1_macro":
        raise ConfigError(f"metric: f1_macro does not apply to task {task.name}; the validation loss selects the "
                          "model (--metric loss)")
    check_generator(resolved.config, resolved.path, task.name)
    train, validation = read_pairs(dataset, "train"), read_pairs(dataset, "validation")
    tokenizer = load_tokenizer(resolved, trust_remote_code=config.trust_remote_code)
    limit = model_max_length(AutoConfig.from_pretrained(resolved.path), tokenizer)
    auto = None
    if not isinstance(config.max_length, int):
        # A catalog max_length is a classification input length (64 for SmolLM2): it would cut most prompts.
        lengths = pair_token_lengths(tokenizer, train, seed=config.seed,
                                     seq2seq=bool(resolved.config.get("is_encoder_decoder")))
        auto = min(auto_max_length(lengths, limit), MAX_AUTO_LENGTH)
        logger.info("max_length auto: %d tokens (p95 of %d training prompt+target lengths = %.0f tokens, model "
                    "limit %d, auto cap %d)", auto, len(lengths), float(np.percentile(lengths, 95)), limit,
                    MAX_AUTO_LENGTH)
    hp = resolve_hyperparameters(config, resolved.entry, limit, auto_length=auto)
    hp["max_length_source"] = "auto" if auto is not None else "given"
    if hp["max_length"] < 4:
        raise ConfigError(f"max_length: expected at least 4 tokens, got {hp['max_length']}")
    return SFTSide(config, resolved, tokenizer, hp, train, validation, task)


def pair_token_lengths(tokenizer: Any, split: PairSplit, *, seed: int, seq2seq: bool = False) -> np.ndarray:
    """Tokens per training example as trained, on the pairs of :func:`auto_sample_rows`.

    A decoder's example is the prompt (chat template applied) + target + EOS; a seq2seq example counts the
    longer of prompt and target.
    """
    from transferkit.data.prompts import prompt_ids, target_ids

    lengths = []
    for i in auto_sample_rows(len(split.sources), seed):
        prompt = len(prompt_ids(tokenizer, split.instructions[i], split.sources[i], seq2seq=seq2seq))
        target = len(target_ids(tokenizer, split.labels[i]))
        lengths.append(max(prompt, target) if seq2seq else prompt + target)
    return np.asarray(lengths, dtype=np.int64)


class TokenizedPairs:
    """Map-style dataset of ``{"input_ids", "attention_mask", "labels"}`` with the prompt masked."""

    augment = "none"

    def __init__(self, split: PairSplit, tokenizer: Any, max_length: int, *, seq2seq: bool = False) -> None:
        from transferkit.data.prompts import fit, prompt_ids, target_ids

        self.rows = []
        for instruction, source, target in zip(split.instructions, split.sources, split.labels, strict=True):
            fitted = fit(prompt_ids(tokenizer, instruction, source, seq2seq=seq2seq), target_ids(tokenizer, target),
                         max_length, seq2seq=seq2seq)
            if seq2seq:
                self.rows.append({"input_ids": fitted.prompt, "attention_mask": [1] * len(fitted.prompt),
                                  "labels": fitted.target})
                continue
            ids = fitted.prompt + fitted.target
            self.rows.append({"input_ids": ids, "attention_mask": [1] * len(ids),
                              "labels": [-100] * len(fitted.prompt) + fitted.target})

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.rows[index]


class SFTSide(TrainingSide):
    """The generative tasks' side of the training recipe (strategies ``full``, ``lora`` and ``off_the_shelf``)."""

    model_computes_loss = True
    lora_trains_head = False

    def __init__(self, config: Any, resolved: Any, tokenizer: Any, hp: dict[str, Any], train: PairSplit,
                 validation: PairSplit, task: Any) -> None:
        self.config, self.resolved, self.tokenizer, self.hp, self.task = config, resolved, tokenizer, hp, task
        self.train_split, self.validation_split = train, validation
        self.seq2seq = bool(resolved.config.get("is_encoder_decoder"))
        self.lora_task_type = "SEQ_2_SEQ_LM" if self.seq2seq else "CAUSAL_LM"
        self.processing_class = tokenizer
        self.pooling = "none"
        self.generation = generation_settings(config, tokenizer)
        self.preprocessing = {"kind": "prompt", "seq2seq": self.seq2seq,
                              "chat_template": bool(getattr(tokenizer, "chat_template", None)) and not self.seq2seq,
                              "max_length": hp["max_length"], "generation": self.generation}

    def identity(self) -> dict[str, Any]:
        """The prompt format decides what the checkpoints learned."""
        return {"task": self.task.name, "chat_template": self.preprocessing["chat_template"], "seq2seq": self.seq2seq}

    def selection_metric(self, config: Any) -> str:
        """Generative models are selected on validation loss (accuracy does not apply)."""
        return LOSS_METRIC

    def trainer_metrics(self) -> Any:
        """The Trainer evaluates the loss only (logits over the vocabulary are never gathered)."""
        return None

    def derived_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Perplexity of the validation targets from their mean loss."""
        if LOSS_METRIC in metrics:
            metrics = {**metrics, "perplexity": math.exp(min(metrics[LOSS_METRIC], 50.0))}
        return metrics

    def _load(self, path: Path | None = None) -> Any:
        return load_generator(path or self.resolved.path, allow_pickle=self.config.allow_pickle,
                              trust_remote_code=self.config.trust_remote_code)

    def build_model(self, ctx: Any) -> Any:
        """The pre-trained causal LM (seeded; nothing new is initialised)."""
        import torch

        torch.manual_seed(self.config.seed)
        model = self._load()
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model.train()

    def freeze(self, model: Any, strategy: str, unfreeze_top_layers: int) -> dict[str, Any]:
        """``full`` trains every weight; the layer layout drives LR decay and L2-SP."""
        from transferkit.train.modeling import freeze_for_strategy

        return freeze_for_strategy(model, strategy, unfreeze_top_layers)

    def quantization_aware(self, model: Any, mode: str) -> Any:
        """``int4``: train against the weights (and CPU int8 activations) of the export's default int4 graph.

        Raises:
            ConfigError: An encoder-decoder model (the generative export builds decoder-only graphs).
        """
        if self.seq2seq:
            raise ConfigError(f"quantization_aware: {mode} emulates the ONNX Runtime GenAI int4 graph, which the "
                              "export builds for decoder-only models; this model is an encoder-decoder")
        from transferkit.train.quantization_aware import emulate_int4

        return emulate_int4(model)

    def datasets(self, ctx: Any) -> tuple[Any, Any]:
        """Tokenized training and validation pairs (prompt masked, cut to ``max_length``)."""
        max_length = self.hp["max_length"]
        return (TokenizedPairs(self.train_split, self.tokenizer, max_length, seq2seq=self.seq2seq),
                TokenizedPairs(self.validation_split, self.tokenizer, max_length, seq2seq=self.seq2seq))

    def supports_feature_cache(self, model: Any) -> bool:
        """No frozen base (feature_extraction is refused)."""
        return False

    def cached_features(self, model: Any, ctx: Any, datasets: dict[str, Any]) -> tuple[dict[str, Any], str, bool]:
        """Not used (see :meth:`supports_feature_cache`)."""
        raise ModelError(f"task {self.task.name}: no feature cache")

    def head_model(self, model: Any) -> Any:
        """Not used (see :meth:`supports_feature_cache`)."""
        raise ModelError(f"task {self.task.name}: no feature cache")

    def collator(self, device: str) -> Any:
        """Pads ids with the pad token and labels with -100 (transformers' seq2seq collator works for both)."""
        from transformers import DataCollatorForSeq2Seq

        return DataCollatorForSeq2Seq(self.tokenizer, padding=True, label_pad_token_id=-100, return_tensors="pt")

    def train_lengths(self, train_ds: Any) -> list[int] | None:
        """Token lengths for length-grouped batches."""
        return [len(row["input_ids"]) for row in train_ds.rows]

    def eval_order(self, eval_ds: Any) -> list[int]:
        """Validation rows by length (less padding)."""
        return sorted(range(len(eval_ds)), key=lambda i: len(eval_ds.rows[i]["input_ids"]))

    def off_the_shelf(self, ctx: Any) -> tuple[Any, dict[str, Any]]:
        """Zero-shot: the base model with the prompt and the generation settings, no training."""
        model = self._load().eval()
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        return model, {"device": "cpu", "zero_shot": {"mode": "prompted", **self.preprocessing},
                       "resolved": {"mode": "zero_shot", "max_length": self.hp["max_length"],
                                    "model_max_length": self.hp["model_max_length"]}}

    def validation_metrics(self, ctx: Any, model_dir: Path, model: Any = None) -> dict[str, float]:
        """Mean target-token loss and perplexity on the validation pairs."""
        import torch

        if model is None:
            model = self._load(model_dir)
        rows = TokenizedPairs(self.validation_split, self.tokenizer, self.hp["max_length"], seq2seq=self.seq2seq)
        collate = self.collator("cpu")
        model.eval()
        total, tokens = 0.0, 0
        with torch.inference_mode():
            for start in range(0, len(rows), EVAL_BATCH):
                batch = collate([rows[i] for i in range(start, min(start + EVAL_BATCH, len(rows)))])
                batch = {k: v.to(model.device) for k, v in batch.items()}
                # A causal LM predicts labels[1:] from the tokens before them; a seq2seq decoder every label.
                count = int((batch["labels"][:, 0 if self.seq2seq else 1:] != -100).sum())
                total += float(model(**batch).loss) * count
                tokens += count
        return self.derived_metrics({LOSS_METRIC: total / max(tokens, 1)})

    def save(self, directory: Path, model: Any, labels: list[str]) -> None:
        """Weights (safetensors), config marked with the task, tokenizer, ``generation_config.json``."""
        from transformers import GenerationConfig

        model.config.transferkit_task = self.task.name
        start = {"decoder_start_token_id": model.config.decoder_start_token_id} if self.seq2seq else {}
        model.generation_config = GenerationConfig(**self.generation, **start)
        model.save_pretrained(directory, safe_serialization=True)
        self.tokenizer.save_pretrained(directory)
        write_json(directory / "labels.json", list(labels))
        if not (directory / "model.safetensors").is_file() and \
                not (directory / "model.safetensors.index.json").is_file():
            raise TrainingError(f"{directory}: save_pretrained wrote no safetensors weights")
