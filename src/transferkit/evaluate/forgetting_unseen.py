"""Forgetting of a generative model on a task it was not tuned for: zero-shot title generation.

Beside the perplexity check (:mod:`transferkit.evaluate.forgetting_lm`), an instruct base can be asked to do
something the fine-tune never showed it. The probe gives the base and the fine-tuned model the same prompt,
"Write the title of this paper." + an abstract from the ``builtin:aclsum`` test split (each paper once; the
titles ship with ACLSum), decodes greedily and scores ROUGE-L against the real titles. A summarization fine-tune
on aclsum saw these abstracts' *summaries* in its test split at most, never their titles. The result is
reported beside the perplexity retention; it is not gated.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transferkit.errors import ConfigError

logger = logging.getLogger(__name__)

TITLE_INSTRUCTION = "Write the title of this paper."
TITLE_SOURCE = "builtin:aclsum"
DEFAULT_PAPERS = 20
MAX_NEW_TOKENS = 24
MAX_LENGTH = 512
EXAMPLES = 3


def title_pairs(n_papers: int) -> tuple[list[str], list[str]]:
    """(abstract, title) of the first ``n_papers`` papers of the aclsum test split, each paper once.

    Raises:
        ConfigError: ``n_papers`` below 1.
        AssetError: The aclsum package is not installed.

    """
    from transferkit.data.builtin import BUILTINS

    if n_papers < 1:
        raise ConfigError(f"unseen_task_papers: expected at least 1 paper, got {n_papers}")
    table = BUILTINS["aclsum"].build()
    abstracts: list[str] = []
    titles: list[str] = []
    seen: set[str] = set()
    for paper, split, source, title in zip(*(table.column(c).to_pylist() for c in ("paper", "split", "source",
                                                                                       "title")), strict=True):
        if split != "test" or paper in seen or not title.strip():
            continue
        seen.add(paper)
        abstracts.append(source)
        titles.append(title.strip())
        if len(abstracts) == n_papers:
            break
    return abstracts, titles


def title_probe(base: str | Path, model: str | Path, *, n_papers: int = DEFAULT_PAPERS, seed: int = 0,
                progress: bool = False, allow_pickle: bool = False, trust_remote_code: bool = False
                ) -> dict[str, Any]:
    """Zero-shot title generation by ``base`` and ``model`` on the same abstracts; ROUGE-L of each.

    Both decode greedily with the fine-tuned model's end-of-sequence and padding tokens, at most
    :data:`MAX_NEW_TOKENS` new tokens, the prompt cut at :data:`MAX_LENGTH` tokens as in evaluation.

    Raises:
        ModelError: A model that is not a causal LM (or does not load).

    """
    from transformers import GenerationConfig

    from transferkit.evaluate.generation import generate, summarize_outputs

    abstracts, titles = title_pairs(n_papers)
    try:
        saved = GenerationConfig.from_pretrained(model)
    except OSError:
        saved = GenerationConfig()
    generation = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1,
                                  repetition_penalty=saved.repetition_penalty or 1.0,
                                  eos_token_id=saved.eos_token_id, pad_token_id=saved.pad_token_id)
    pairs = {"instruction": [TITLE_INSTRUCTION] * len(abstracts), "source": abstracts}
    outputs = {}
    for role, ref in (("base", base), ("model", model)):
        outputs[role] = generate(ref, pairs, max_length=MAX_LENGTH, generation=generation, seed=seed,
                                 progress=progress, task_name="title generation", allow_pickle=allow_pickle,
                                 trust_remote_code=trust_remote_code)
    base_scores, _ = summarize_outputs(outputs["base"], titles)
    model_scores, _ = summarize_outputs(outputs["model"], titles)
    base_l, model_l = base_scores["rougeL"], model_scores["rougeL"]
    logger.info("unseen task (title generation): ROUGE-L base %.4f, fine-tuned %.4f on %d abstracts", base_l,
                model_l, len(titles))
    return {"description": f"title generation from {TITLE_SOURCE} test abstracts (not a tuned task)",
            "instruction": TITLE_INSTRUCTION, "n": len(titles), "max_new_tokens": MAX_NEW_TOKENS,
            "base_rougeL": base_l, "model_rougeL": model_l,
            "retention": (model_l / base_l) if base_l > 0 else None,
            "base_generated_words": base_scores["generated_words"],
            "model_generated_words": model_scores["generated_words"],
            "examples": [{"title": t, "base": b, "model": m}
                         for t, b, m in zip(titles[:EXAMPLES], outputs["base"], outputs["model"], strict=False)]}
