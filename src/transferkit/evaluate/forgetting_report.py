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


def write_forgetting_report(
    out: Path, payload: dict[str, Any], probe: ForgettingProbe, base_m: Measurement, model_m: Measurement
) -> tuple[Path, Path]:
    """Write ``report.md`` / ``report.html`` (+ PNGs) of a forgetting check into ``out``."""
    details = payload["details"]
    report = Report("Forgetting check")
    status = "PASSED" if payload["passed"] else "FAILED"
    report.paragraph(f"{status}: {payload['reason']}", "pass" if payload["passed"] else "fail")
    report.heading("What was measured")
    report.paragraph(_EXPLAIN[payload["mode"]])
    report.paragraph(
        f"Base model: {details['base']}. Fine-tuned model: {details['model']}. Source set: "
        f"{details['source_description']}. Texts were truncated at {details['max_length']} tokens "
        f"(the base model's limit, capped at 256); {details['truncated_texts']} of {details['n_texts']} texts "
        "were longer.", "note",
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
    if details.get("cka_per_layer"):
        report.heading("Representation drift per layer")
        report.figure("layer_cka.png", charts.layer_cka(details["cka_per_layer"]), "Linear CKA per layer")
        report.paragraph(
            "Linear CKA between base and fine-tuned mean-pooled hidden states of the same texts, per layer: "
            "where in the network fine-tuning changed the representation.", "note",
        )
    return report.write(out, stem="report")
