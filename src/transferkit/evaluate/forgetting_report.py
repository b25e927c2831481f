"""HTML + Markdown report of the forgetting check."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from transferkit.evaluate import charts
from transferkit.reporting import Report

if TYPE_CHECKING:
    from transferkit.evaluate.forgetting import ForgettingProbe, Measurement

_EXPLAIN = {
    "perplexity": (
        "The source skill of a language model is language modelling. The base model's own LM head is put on "
        "the fine-tuned backbone and the token-level perplexity of both models is computed on the reference "
        "texts; the score is 1 / perplexity, so retention is base perplexity / fine-tuned perplexity "
        "(1 = nothing forgotten)."
    ),
    "similarity": (
        "Each text of the source set is embedded by mean-pooling the encoder's last hidden state (the last "
        "pre-trained layer: the fixed read-out layer that transferkit adds to mean-pooling classifiers is "
        "skipped); the cosine "
        "similarity of each pair is compared with the human similarity score. Pearson correlation is the "
        "primary score (the figure usually reported for the Lee corpus), Spearman is shown beside it. A "
        "fine-tuned encoder that kept its general-purpose embeddings keeps a similar correlation."
    ),
    "source-task": (
        "The base model's own classification head is applied on top of the base encoder and on top of the "
        "fine-tuned encoder (the head, including its pooler, is kept from the base model). The drop in "
        "source-task accuracy is what fine-tuning cost the original task."
    ),
    "representation-drift": (
        "Linear centered kernel alignment (CKA) compares the base and fine-tuned mean-pooled representations "
        "of the same probe texts. It needs no labels; 1.0 means the representation geometry is unchanged, "
        "values near 0 mean it has been rewritten."
    ),
}

_EXPLAIN_IMAGE = {
    "source-task": (
        "Head transplant: the base model's own classification head, trained on the source task, is kept and the "
        "fine-tuned backbone (every tensor below the head, BatchNorm statistics included) is put underneath it. "
        "The base model and this hybrid classify the same source images; the drop in source-task accuracy is "
        "what fine-tuning cost the original task (the text source-task mode keeps the base head the same way)."
    ),
    "representation-drift": (
        "Linear centered kernel alignment (CKA) compares base and fine-tuned features of the same probe images "
        "at every stage below the head, each stage output global-average-pooled over its spatial axes. It needs "
        "no labels; 1.0 means the representation geometry is unchanged. The primary score is the CKA of the "
        "last stage below the head."
    ),
}


def write_forgetting_report(
    out: Path, payload: dict[str, Any], probe: ForgettingProbe, base_m: Measurement, model_m: Measurement
) -> tuple[Path, Path]:
    """Write ``report.md`` / ``report.html`` (+ PNGs) of a forgetting check into ``out``."""
    details = payload["details"]
    report = Report("Forgetting check")
    status = "PASSED" if payload["passed"] else "FAILED"
    report.paragraph(f"{status}: {payload['reason']}", "pass" if payload["passed"] else "fail")
    report.heading("What was measured")
    image = details.get("modality") == "image"
    report.paragraph((_EXPLAIN_IMAGE if image else _EXPLAIN)[payload["mode"]])
    if image:
        sampled = (f"a seeded sample of {details['n_images']} of its {details['source_size']} images"
                   if details["n_images"] < details["source_size"] else f"all {details['n_images']} images")
        report.paragraph(
            f"Base model: {details['base']}. Fine-tuned model: {details['model']}. Source set: "
            f"{details['source_description']}; {sampled} were used, preprocessed the way the base model expects "
            f"at {details['image_size']}x{details['image_size']} pixels (both models see the same tensors).",
            "note",
        )
    else:
        report.paragraph(
            f"Base model: {details['base']}. Fine-tuned model: {details['model']}. Source set: "
            f"{details['source_description']}. Texts were truncated at {details['max_length']} tokens "
            f"(the base model's limit, capped at {details.get('length_cap', 256)}); {details['truncated_texts']} of "
            f"{details['n_texts']} texts were longer.", "note",
        )
    report.heading("Before / after")
    names = list(details["scores"])
    report.figure(
        "before_after.png",
        charts.before_after(names, [details["scores"][n]["base"] for n in names],
                            [details["scores"][n]["model"] for n in names],
                            f"Source-task ability ({payload['mode']})"),
        "Base vs fine-tuned source-task scores",
    )
    report.table(
        ["metric", "base", "fine-tuned", "retention", "drop"],
        [[n, details["scores"][n]["base"], details["scores"][n]["model"],
          (details["scores"][n]["model"] / details["scores"][n]["base"]) if details["scores"][n]["base"] else "n/a",
          details["scores"][n]["base"] - details["scores"][n]["model"]] for n in names],
    )
    if "perplexity" in details:
        ppl = details["perplexity"]
        head = details.get("head", "base model's LM head on the fine-tuned backbone")
        report.paragraph(f"Perplexity on the reference texts: base {ppl['base']:.3f}, fine-tuned ({head}) "
                         f"{ppl['model']:.3f} (lower is better).")
    if "unseen_task" in details:
        unseen = details["unseen_task"]
        report.heading("Unseen task (zero-shot, not gated)")
        report.paragraph(f"{unseen['description']}: ROUGE-L base {unseen['base_rougeL']:.4f}, fine-tuned "
                         f"{unseen['model_rougeL']:.4f} on {unseen['n']} abstracts (instruction "
                         f"\"{unseen['instruction']}\", greedy, {unseen['max_new_tokens']} new tokens).")
        report.table(["title", "base", "fine-tuned"],
                     [[e["title"], e["base"], e["model"]] for e in unseen["examples"]])
    gates = []
    if payload["max_drop"] is not None:
        gates.append(f"max_drop {payload['max_drop']:g}")
    if payload["min_retention"] is not None:
        gates.append(f"min_retention {payload['min_retention']:g}")
    report.paragraph(
        f"Primary score: {payload['metric']}; retention {payload['retention']:.4f}, drop {payload['drop']:.4f}; "
        f"gate: {', '.join(gates) if gates else 'none (report only)'}."
    )
    if base_m.cosines is not None and model_m.cosines is not None:
        report.heading("Human scores vs cosine similarity")
        human = np.asarray(probe.source.scores)
        report.figure(
            "similarity_scatter.png",
            charts.similarity_scatter(human, base_m.cosines, model_m.cosines, base_m.scores["pearson"],
                                      model_m.scores["pearson"]),
            "Human similarity vs cosine similarity, base and fine-tuned",
        )
    if details.get("cka_per_layer") and image:
        names = details.get("cka_layer_names")
        report.heading("Representation drift per stage")
        report.figure("layer_cka.png", charts.layer_cka(details["cka_per_layer"], names), "Linear CKA per stage")
        report.table(["stage", "linear CKA"], [[n, v] for n, v in zip(names or [], details["cka_per_layer"],
                                                                        strict=False)])
        report.paragraph(
            "Linear CKA between base and fine-tuned global-average-pooled stage outputs of the same images, from "
            "the stem to the last stage below the head: where in the network fine-tuning changed the "
            "representation.", "note",
        )
    elif details.get("cka_per_layer"):
        report.heading("Representation drift per layer")
        report.figure("layer_cka.png", charts.layer_cka(details["cka_per_layer"]), "Linear CKA per layer")
        report.paragraph(
            "Linear CKA between base and fine-tuned mean-pooled hidden states of the same texts, per layer: "
            "where in the network fine-tuning changed the representation.", "note",
        )
    return report.write(out, stem="report")
