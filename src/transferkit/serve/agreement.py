"""Deploy-time check that the served graph still predicts what the fp32 graph predicted at export.

The export step stores ``agreement_sample.json``: validation inputs exactly as a client sends them (texts, or
base64 of the encoded images) with the fp32 graph's labels. The accuracy gate ran on the export node's CPU;
int8 kernels differ between CPUs (without VNNI, full-range int8 sums saturate), so the deploy step sends the
sample through the freshly loaded version on the serving node and rolls back when fewer than
``min_agreement`` of the served labels equal the fp32 ones. fp32 labels are the reference because fp32 graphs
compute the same labels on every CPU up to rounding.

A variant the accuracy gate kept although it already disagreed with fp32 more often on the export node (a loose
``max_drop``, near-tie labels of a weak model) is held to what it did there instead: the served agreement may
fall at most ``AGREEMENT_SLACK`` below the export-time agreement of the same graph (also in the sample).

Only decisive inputs count: those whose fp32 top-two logit margin exceeds ``DECISIVE_MARGIN`` of the largest
|logit| (at least 0.1). A near-tie may flip legitimately (dynamic int8 picks activation scales from the batch it
sees, and the server batches differently), and says nothing about the kernels.
"""

from __future__ import annotations

import base64
import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from transferkit.errors import ServingError
from transferkit.export.io_spec import AGREEMENT_SAMPLE_FILE
from transferkit.serve.control import TritonControl
from transferkit.serve.repository import ExportedModel

logger = logging.getLogger(__name__)

# Requests of this many inputs: large enough to amortise HTTP, small enough for any max_batch_size we write.
REQUEST_ROWS = 8
# Served agreement may be this much below the same graph's agreement on the export node (batching/rounding).
AGREEMENT_SLACK = 0.05
DECISIVE_MARGIN = 0.1


@dataclass
class AgreementSample:
    """``agreement_sample.json`` of an export directory."""

    inputs: list[str]
    pairs: list[str] | None
    labels: list[str]
    variant_labels: dict[str, list[str]] = field(default_factory=dict)
    logits: list[list[float]] = field(default_factory=list)

    def decisive(self) -> list[int]:
        """Indices of inputs whose fp32 label is not a near-tie (all of them when no logits are stored)."""
        if len(self.logits) != len(self.labels) or not self.logits:
            return list(range(len(self.labels)))
        values = np.asarray(self.logits, dtype=np.float64)
        if values.shape[1] < 2:
            return list(range(len(self.labels)))
        top = np.sort(values, axis=1)
        threshold = max(0.1, DECISIVE_MARGIN * float(np.max(np.abs(values))))
        return [int(i) for i in np.flatnonzero(top[:, -1] - top[:, -2] > threshold)]

    def export_agreement(self, variant: str, rows: list[int]) -> float | None:
        """Fraction of ``rows`` on which ``variant`` gave the fp32 label on the export node (None: unknown)."""
        labels = self.variant_labels.get(variant)
        if variant == "fp32":
            return 1.0
        if not labels or len(labels) != len(self.labels) or not rows:
            return None
        return float(np.mean([labels[i] == self.labels[i] for i in rows]))

    @classmethod
    def load(cls, exported: ExportedModel) -> AgreementSample | None:
        """The export's sample, or None for exports written before it existed.

        Raises:
            ServingError: The file is malformed.
        """
        path = exported.directory / AGREEMENT_SAMPLE_FILE
        if not path.is_file():
            return None
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            sample = cls(inputs=list(raw["inputs"]), pairs=raw.get("pairs"), labels=list(raw["labels"]),
                         variant_labels=dict(raw.get("variant_labels", {})), logits=list(raw.get("logits", [])))
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ServingError(f"{path}: malformed agreement sample ({type(exc).__name__}: {exc})") from exc
        if len(sample.inputs) != len(sample.labels):
            raise ServingError(f"{path}: {len(sample.inputs)} inputs but {len(sample.labels)} labels")
        return sample


@dataclass
class AgreementResult:
    """Outcome of the agreement check."""

    passed: bool
    inputs: int
    agreement: float
    min_agreement: float
    export_agreement: float | None = None
    required: float = 0.0
    disagreeing: list[int] = field(default_factory=list)
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (the deployment record)."""
        return asdict(self)


def _served_labels(control: TritonControl, exported: ExportedModel, model: str, version: int | None,
                   sample: AgreementSample) -> list[str]:
    labels: list[str] = []
    for start in range(0, len(sample.inputs), REQUEST_ROWS):
        rows = sample.inputs[start : start + REQUEST_ROWS]
        if exported.kind == "image":
            served = control.infer_images(model, [base64.b64decode(r) for r in rows], version=version,
                                          outputs=("label",))
        else:
            pairs = sample.pairs[start : start + REQUEST_ROWS] if sample.pairs is not None else None
            served = control.infer_texts(model, rows, version=version, pairs=pairs, outputs=("label",))
        labels += [v.decode("utf-8") if isinstance(v, bytes) else str(v)
                   for v in np.asarray(served["label"]).reshape(-1)]
    return labels


def check_agreement(control: TritonControl, exported: ExportedModel, model: str, version: int | None,
                    min_agreement: float) -> AgreementResult | None:
    """Send the export's agreement sample through ``model`` and compare labels with the fp32 ones.

    Args:
        control: Client of the serving Triton.
        exported: The export the version was built from.
        model: Ensemble name.
        version: Version to query (None: the newest ready one).
        min_agreement: Smallest fraction of inputs whose served label must equal the fp32 label.

    Returns:
        The result, or None when the export has no sample (older exports) or the model has no raw-input
        ensemble to send it to.
    """
    sample = AgreementSample.load(exported)
    if sample is None or not sample.inputs or exported.kind not in ("text", "image"):
        return None
    served = _served_labels(control, exported, model, version, sample)
    rows = sample.decisive()
    disagreeing = [i for i in rows if served[i] != sample.labels[i]]
    agreement = 1.0 - len(disagreeing) / len(rows) if rows else 1.0
    at_export = sample.export_agreement(exported.variant, rows)
    required = min_agreement if at_export is None else min(min_agreement, at_export - AGREEMENT_SLACK)
    result = AgreementResult(agreement + 1e-12 >= required, len(rows), round(agreement, 6), min_agreement,
                             None if at_export is None else round(at_export, 6), round(required, 6), disagreeing)
    if not rows:
        result.reason = f"no decisive inputs among {len(sample.labels)}: every fp32 label is a near-tie"
    if not result.passed:
        measured = "" if at_export is None else f", {at_export:.1%} on the export node"
        result.reason = (f"{exported.variant} graph as served agrees with the fp32 graph on {agreement:.1%} of "
                         f"{len(rows)} decisive validation inputs (required {required:.1%}: min_agreement "
                         f"{min_agreement:.0%}{measured}); its int8 kernels on this node's CPU compute other numbers "
                         "than the export node's (re-export with cpu_isa=portable, or serve on VNNI nodes)")
    logger.info("Agreement check of %s v%s: %.1f%% of %d decisive inputs agree with fp32 (required %.1f%%) -> %s",
                model, version, 100 * agreement, len(rows), 100 * required, "passed" if result.passed else "FAILED")
    return result
