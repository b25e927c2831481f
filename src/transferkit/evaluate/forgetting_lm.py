"""Forgetting of decoder (GPT-class) bases: language-modelling perplexity with the base model's own LM head.

The source skill of a language model is predicting the next token. A fine-tuned sequence classifier keeps
the decoder backbone but drops the LM head, so, as image forgetting does with the classification head, the
base model's LM head is put on the fine-tuned backbone (untied from the fine-tuned embeddings) and both
models' perplexity is computed on a fixed reference text set shipped offline: the 50 documents of gensim's
Lee corpus (``builtin:lee-similarity``'s texts). A fine-tuned generative model (summarization, instruction)
is still a language model: its task (:meth:`~transferkit.tasks.base.Task.forgetting_language_model`) has it
measured whole, with its own LM head. The score is ``1 / perplexity``, so that the shared gate's
``retention = model / base`` is ``base perplexity / fine-tuned perplexity`` (1 = nothing forgotten).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from transferkit.errors import EvaluationError, ModelError

logger = logging.getLogger(__name__)

PERPLEXITY = "perplexity"
METRIC = "inverse_perplexity"
DECODER_MODEL_TYPES = ("llama", "mistral", "qwen2", "gpt2")
MAX_LENGTH = 512


def wants_perplexity(cfg: Any) -> bool:
    """Whether a forgetting check runs in ``perplexity`` mode: asked for, or left open on a decoder base.

    Raises:
        ModelError: The base model cannot be resolved.

    """
    if cfg.mode is not None:
        return cfg.mode == PERPLEXITY
    from transferkit.models.catalog import resolve_model

    resolved = resolve_model(cfg.base, allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code)
    if resolved.entry is not None and resolved.entry.forgetting_mode:
        return resolved.entry.forgetting_mode == PERPLEXITY
    return resolved.model_type in DECODER_MODEL_TYPES


class PerplexityProbe:
    """Reference texts bound to a base causal LM; measures any backbone of that architecture with its LM head."""

    def __init__(self, base: str | Path, source: Any, *, max_length: int | None = None, batch_size: int = 4,
                 allow_pickle: bool = False, trust_remote_code: bool = False, progress: bool = True) -> None:
        from transformers import AutoModelForCausalLM

        from transferkit.models.catalog import resolve_model
        from transferkit.models.loading import load_tokenizer

        self.resolved = resolve_model(base, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        if self.resolved.model_type not in DECODER_MODEL_TYPES:
            raise ModelError(f"{base}: perplexity mode needs a decoder base ({', '.join(DECODER_MODEL_TYPES)}), "
                             f"not {self.resolved.model_type!r}")
        self.mode, self.metric, self.source = PERPLEXITY, METRIC, source
        self.batch_size, self.progress = batch_size, progress
        self.tokenizer = load_tokenizer(self.resolved, trust_remote_code=trust_remote_code)
        # Right padding keeps every text's positions 0..n-1 (left padding would shift the rotary positions).
        self.tokenizer.padding_side = "right"
        try:
            self.base_model = AutoModelForCausalLM.from_pretrained(
                self.resolved.path, use_safetensors=not allow_pickle, trust_remote_code=trust_remote_code).eval()
        except Exception as exc:
            raise ModelError(f"{self.resolved.path}: cannot load the base language model ({type(exc).__name__})"
                             ) from exc
        self.max_length = min(max_length or MAX_LENGTH, int(self.base_model.config.max_position_embeddings))
        self.texts = [t for t in source.texts if t.strip()]
        if not self.texts:
            raise EvaluationError(f"{source.name}: perplexity mode needs reference texts; the source set has none "
                                  f"({source.describe()})")
        lengths = [len(ids) for ids in self.tokenizer(self.texts, add_special_tokens=False)["input_ids"]]
        self.truncated = sum(n > self.max_length for n in lengths)
        self.head = "base model's LM head on the fine-tuned backbone"

    def as_language_model(self, model_dir: Path | str) -> Any:
        """The fine-tuned causal LM of ``model_dir`` with its own LM head (a generative model).

        Raises:
            ModelError: Not a causal LM of the base's architecture and vocabulary.

        """
        from transformers import AutoModelForCausalLM

        try:
            lm = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True)
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{model_dir}: cannot load as a causal language model ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0]})") from exc
        base, tuned = self.base_model.config, lm.config
        if (tuned.model_type, tuned.vocab_size, tuned.hidden_size) != (base.model_type, base.vocab_size,
                                                                       base.hidden_size):
            raise ModelError(f"{model_dir}: {tuned.model_type} (vocabulary {tuned.vocab_size}, width "
                             f"{tuned.hidden_size}) is not a fine-tune of the base {self.resolved.reference} "
                             f"({base.model_type}, {base.vocab_size}, {base.hidden_size})")
        self.head = "the fine-tuned model's own LM head"
        return lm.eval()

    def with_base_head(self, model_dir: Path) -> Any:
        """The fine-tuned backbone of ``model_dir`` under a copy of the base model's LM head.

        Raises:
            ModelError: The fine-tuned model's backbone does not fit the base architecture.

        """
        import copy

        import torch
        from safetensors.torch import load_file

        lm = copy.deepcopy(self.base_model)
        # Untie: with tied embeddings the head would follow the fine-tuned embeddings.
        lm.lm_head.weight = torch.nn.Parameter(self.base_model.get_output_embeddings().weight.detach().clone())
        prefix = lm.base_model_prefix + "."
        weights = Path(model_dir) / "model.safetensors"
        if not weights.is_file():
            raise ModelError(f"{model_dir}: no model.safetensors to read the fine-tuned backbone from")
        backbone = {k[len(prefix):]: v for k, v in load_file(weights).items() if k.startswith(prefix)}
        target = lm.base_model.state_dict()
        misfit = [k for k, v in backbone.items() if k in target and target[k].shape != v.shape]
        if misfit:
            raise ModelError(f"{model_dir}: backbone does not fit the base {self.resolved.reference} "
                             f"(shapes differ, e.g. {misfit[:3]})")
        missing, unexpected = lm.base_model.load_state_dict(backbone, strict=False)
        if unexpected or missing:
            raise ModelError(f"{model_dir}: backbone does not fit the base {self.resolved.reference} "
                             f"({len(missing)} missing, {len(unexpected)} unexpected tensors)")
        return lm.eval()

    def measure(self, lm: Any, *, desc: str = "perplexity") -> Any:
        """Token-level perplexity of ``lm`` over the reference texts (each truncated to ``max_length``)."""
        import torch
        from tqdm.auto import tqdm

        from transferkit.evaluate.forgetting import Measurement

        total_nll, total_tokens = 0.0, 0
        starts = range(0, len(self.texts), self.batch_size)
        with torch.no_grad():
            for start in tqdm(starts, desc=desc, disable=not self.progress):
                batch = self.tokenizer(self.texts[start:start + self.batch_size], padding=True, truncation=True,
                                       max_length=self.max_length, return_tensors="pt")
                logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                targets = batch["input_ids"][:, 1:].masked_fill(batch["attention_mask"][:, 1:] == 0, -100)
                nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                        targets.reshape(-1), ignore_index=-100, reduction="sum")
                total_nll += float(nll)
                total_tokens += int((targets != -100).sum())
        perplexity = math.exp(total_nll / max(total_tokens, 1))
        logger.info("%s: perplexity %.3f over %d tokens", desc, perplexity, total_tokens)
        return Measurement(1.0 / perplexity, {METRIC: 1.0 / perplexity})

    def details(self) -> dict[str, Any]:
        """What the report and forgetting.json record about the probe."""
        return {"max_length": self.max_length, "length_cap": MAX_LENGTH, "truncated_texts": self.truncated,
                "n_texts": len(self.texts), "n_items": len(self.texts), "source_description": self.source.describe(),
                "head": self.head}


def check_forgetting_lm(cfg: Any) -> Any:
    """The decoder branch of :func:`~transferkit.evaluate.forgetting.check_forgetting` (mode ``perplexity``)."""
    from transferkit.evaluate.forgetting import DEFAULT_SOURCE, _finish
    from transferkit.evaluate.sources import load_source
    from transferkit.tasks import DEFAULT_TASK, get_task, model_task

    source = load_source(cfg.source or DEFAULT_SOURCE)
    probe = PerplexityProbe(cfg.base, source, max_length=cfg.max_length, batch_size=min(cfg.batch_size, 4),
                            allow_pickle=cfg.allow_pickle, trust_remote_code=cfg.trust_remote_code,
                            progress=cfg.progress)
    base_m = probe.measure(probe.base_model, desc="base")
    task = model_task(cfg.model) or get_task(DEFAULT_TASK)
    model_m = probe.measure(task.forgetting_language_model(probe, cfg.model), desc="fine-tuned")
    details = probe.details()
    details["perplexity"] = {"base": 1.0 / base_m.score, "model": 1.0 / model_m.score}
    if cfg.unseen_task_papers:
        details["unseen_task"] = task.unseen_task_probe(cfg)
    return _finish(cfg, probe, base_m, model_m, details)
