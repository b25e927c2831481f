"""A real MiniLM classifier export shared by the serving tests (one export per test process).

Until the export step (``transferkit.export.export_model``) lands, this writes the documented export
layout itself: ``model.onnx`` (legacy ``torch.onnx.export``), optionally ``model.int8.onnx``
(``quantize_dynamic`` per channel), ``io_spec.json``, ``labels.json`` and ``tokenizer/``.
"""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
from pathlib import Path

LABELS = ["negative", "positive"]
MAX_LENGTH = 64
SENTENCES = [
    "A gripping, beautifully acted film that stays with you.",
    "Dull, overlong and completely forgettable.",
    "not bad",
    "The plot makes no sense, but the soundtrack is wonderful and the cast clearly had fun.",
]
_CACHE: dict[int, Path] = {}


def export_minilm(out: Path, *, int8: bool = False, seed: int = 0, recommended: str | None = None) -> Path:
    """Export the MiniLM classifier (new 2-class head, seeded) into ``out``."""
    import torch

    from transferkit.export.io_spec import IOSpec, TensorSpec, VariantSpec
    from transferkit.models.catalog import resolve_model
    from transferkit.models.loading import load_sequence_classifier, load_tokenizer

    torch.manual_seed(seed)
    resolved = resolve_model("minilm-l6")
    model = load_sequence_classifier(resolved, LABELS).eval()
    tokenizer = load_tokenizer(resolved)
    out.mkdir(parents=True, exist_ok=True)
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = tokenizer(["a short example", "another one"], return_tensors="pt", padding=True)

    class Logits(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).logits

    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}}
    with torch.no_grad():
        torch.onnx.export(Logits(model), tuple(sample[n] for n in names), str(out / "model.onnx"),
                          input_names=names, output_names=["logits"], dynamic_axes=axes, opset_version=17,
                          dynamo=False)
    size = (out / "model.onnx").stat().st_size
    variants = {"fp32": VariantSpec(file="model.onnx", precision="fp32", size_bytes=size)}
    if int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        quantize_dynamic(str(out / "model.onnx"), str(out / "model.int8.onnx"), per_channel=True,
                         weight_type=QuantType.QInt8)
        variants["int8"] = VariantSpec(file="model.int8.onnx", precision="int8",
                                       size_bytes=(out / "model.int8.onnx").stat().st_size)
    tokenizer.save_pretrained(str(out / "tokenizer"))
    files = sorted(p.name for p in (out / "tokenizer").iterdir())
    (out / "labels.json").write_text(json.dumps(LABELS))
    IOSpec(
        task="text-classification", model_type="bert",
        inputs=[TensorSpec(n, "int64", [-1, -1]) for n in names],
        outputs=[TensorSpec("logits", "float32", [-1, len(LABELS)])],
        labels=LABELS, max_length=MAX_LENGTH, opset=17, variants=variants,
        recommended_variant=recommended or ("int8" if int8 else "fp32"), tokenizer_files=files,
    ).save(out)
    return out


def shared_export(*, seed: int = 0) -> Path:
    """Export once per process (fp32 recommended + int8 variant) into a temp dir removed at exit.

    Callers must not modify it.
    """
    if seed not in _CACHE:
        root = Path(tempfile.mkdtemp(prefix="tk-serve-export-"))
        atexit.register(shutil.rmtree, root, True)
        _CACHE[seed] = export_minilm(root / "export", int8=True, seed=seed, recommended="fp32")
    return _CACHE[seed]


def pair_export(target: Path) -> Path:
    """A copy of the shared export declared as a sentence-pair model (``preprocessing.text_pair``)."""
    source = shared_export()
    target.mkdir(parents=True, exist_ok=True)
    for item in source.iterdir():
        if item.is_dir():
            shutil.copytree(item, target / item.name)
        elif item.suffix == ".onnx":
            (target / item.name).symlink_to(item)
        else:
            shutil.copy2(item, target / item.name)
    spec = json.loads((target / "io_spec.json").read_text())
    spec["preprocessing"] = {"kind": "tokenizer", "text_pair": True}
    (target / "io_spec.json").write_text(json.dumps(spec))
    return target
