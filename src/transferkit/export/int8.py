"""Which int8 recipe an export uses on CPU, and on which serving nodes it computes what the gate measured.

Two recipes (``--cpu-isa``):

* ``portable`` (default): 7-bit weights (onnxruntime's ``reduce_range``). No product sum can saturate, so the
  graph computes the same numbers on every x86-64 and ARM CPU: the accuracy the gate measured on the export
  node holds on whatever node Triton lands on.
* ``vnni``: full 8-bit weights, one bit more precise. Exact only on CPUs whose int8 kernels accumulate in 32
  bits (AVX-512 VNNI, AVX-VNNI, AMX, ARM dot product); on AVX2-only CPUs ONNX Runtime's uint8 x int8 kernels
  saturate (measured: -15.6 points on an EfficientNet-Lite0 digits model). Serve it only on such nodes: the
  Helm chart's ``cpuFeatures.requireVNNI`` adds the node affinity.

``native`` picks ``vnni`` when the export node itself has an exact int8 path and ``portable`` otherwise (for
clusters whose export and serving nodes are the same kind).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from transferkit.hardware import NFD_VNNI_LABELS, CpuInfo

logger = logging.getLogger(__name__)

CPU_ISAS = ("portable", "native", "vnni")


@dataclass(frozen=True)
class Int8Recipe:
    """How CPU int8 graphs are quantized, and what the serving nodes need for the gate's accuracy to hold.

    Attributes:
        name: ``portable`` or ``vnni``.
        reduce_range: 7-bit weights (``portable``).
        requested: The ``cpu_isa`` option that chose it (``portable``, ``native`` or ``vnni``).
        serving_node_labels: Node labels of which one must be present on a serving node (empty: any CPU).
        gate_is_representative: False when the export node's kernels differ from the serving nodes' (a
            ``vnni`` graph gated on a CPU without VNNI measures saturated sums, i.e. less than served).
    """

    name: str
    reduce_range: bool
    requested: str
    serving_node_labels: tuple[str, ...] = ()
    gate_is_representative: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly view (``io_spec.json`` ``int8_recipe``)."""
        data = asdict(self)
        data["serving_node_labels"] = list(self.serving_node_labels)
        return data


def choose_int8_recipe(cpu_isa: str, cpu: CpuInfo) -> Int8Recipe:
    """The recipe for ``cpu_isa`` on an export node with ``cpu``.

    Args:
        cpu_isa: ``portable``, ``native`` or ``vnni`` (validated by the export config).
        cpu: The export node's CPU.

    Returns:
        The recipe; ``vnni`` records the node labels its serving nodes need.
    """
    name = cpu_isa
    if cpu_isa == "native":
        name = "vnni" if cpu.exact_u8s8 else "portable"
    if name == "portable":
        return Int8Recipe("portable", reduce_range=True, requested=cpu_isa)
    labels = NFD_VNNI_LABELS if cpu.arch in ("x86_64", "amd64", "AMD64") else ()
    representative = cpu.exact_u8s8
    if not representative:
        logger.warning("cpu_isa=%s: this CPU (%s, %s) has no VNNI, so the accuracy gate measures its saturating "
                       "int8 kernels, not the VNNI nodes the graph is meant for", cpu_isa, cpu.model, cpu.int8_isa)
    return Int8Recipe("vnni", reduce_range=False, requested=cpu_isa, serving_node_labels=labels,
                      gate_is_representative=representative)
