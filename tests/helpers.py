"""Test helpers that build small, real inputs (no data-prep step required)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from transferkit.data.builtin import load_builtin

MOVIE_LABELS = ["negative", "positive"]


def write_movie_slice(out: Path, train: int = 64, validation: int = 32, test: int = 32, seed: int = 0) -> Path:
    """Write a prepared-dataset directory from a seeded slice of real movie-review sentences."""
    table = load_builtin("builtin:movie-sentiment")
    rows = list(zip(table.column("text").to_pylist(), table.column("label").to_pylist(), strict=True))
    random.Random(seed).shuffle(rows)
    out.mkdir(parents=True, exist_ok=True)
    start = 0
    for split, count in (("train", train), ("validation", validation), ("test", test)):
        chunk = rows[start : start + count]
        start += count
        pq.write_table(
            pa.table({
                "text": [t for t, _ in chunk],
                "label": pa.array([MOVIE_LABELS.index(lbl) for _, lbl in chunk], pa.int64()),
                "label_name": [lbl for _, lbl in chunk],
            }),
            out / f"{split}.parquet",
        )
    (out / "labels.json").write_text(json.dumps(MOVIE_LABELS))
    (out / "schema.json").write_text(json.dumps({
        "task": "text-classification", "source": "builtin:movie-sentiment", "text_column": "text",
        "text_pair_column": None, "label_column": "label", "group_column": None, "format_version": 1,
    }))
    (out / "stats.json").write_text(json.dumps({"rows": {"train": train, "validation": validation, "test": test}}))
    return out


IMAGE_TASK = "image-classification"


def prepare_image_data(out: Path, dataset: str = "builtin:digits", max_rows: int | None = None, seed: int = 42) -> Path:
    """Prepare a real image dataset (scikit-learn digits by default) with the data-prep step."""
    from transferkit.data.prepare import DataPrepConfig, prepare_dataset

    prepare_dataset(DataPrepConfig(dataset=dataset, out=out, task=IMAGE_TASK, max_rows=max_rows, seed=seed))
    return out


def write_image_model(out: Path, labels: list[str], image_size: int = 32, seed: int = 0) -> Path:
    """Save an EfficientNet-Lite0 (ImageNet weights, new seeded head for ``labels``) at a small input size.

    The directory has the layout of a fine-tuned image model (``save_image_classifier``) without training,
    for tests of the steps after fine-tuning.
    """
    import torch

    from transferkit.data.transforms import ImagePreprocessConfig
    from transferkit.models.vision import load_image_classifier, load_image_preprocessor, save_image_classifier

    torch.manual_seed(seed)
    model = load_image_classifier("efficientnet-lite0", labels)
    base = load_image_preprocessor("efficientnet-lite0").config.to_dict()
    base.update(image_size=image_size, resize_size=None)
    preprocessing = ImagePreprocessConfig.from_dict(base)
    return save_image_classifier(model, out, labels, preprocessing)


def tiny_transformers_image_model(kind: str, num_labels: int = 3):  # type: ignore[no-untyped-def]
    """A seeded, randomly initialised tiny transformers image classifier (resnet, vit, convnext, efficientnet)."""
    import torch
    from transformers import (
        ConvNextConfig,
        ConvNextForImageClassification,
        EfficientNetConfig,
        EfficientNetForImageClassification,
        ResNetConfig,
        ResNetForImageClassification,
        ViTConfig,
        ViTForImageClassification,
    )

    torch.manual_seed(0)
    if kind == "resnet":
        return ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                                                         num_labels=num_labels))
    if kind == "vit":
        return ViTForImageClassification(ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=2,
                                                   num_attention_heads=2, intermediate_size=32,
                                                   num_labels=num_labels))
    if kind == "convnext":
        return ConvNextForImageClassification(ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                                             num_labels=num_labels))
    return EfficientNetForImageClassification(EfficientNetConfig(image_size=32, width_coefficient=0.1,
                                                                 depth_coefficient=0.2, hidden_dim=64,
                                                                 num_labels=num_labels))


def write_tiny_transformers_image_model(kind: str, root: Path) -> Path:
    """Save :func:`tiny_transformers_image_model` with an HF ``preprocessor_config.json`` (32 x 32 inputs)."""
    model_dir = root / kind
    tiny_transformers_image_model(kind).save_pretrained(model_dir)
    processor = ({"size": {"shortest_edge": 32}, "crop_pct": 0.875, "resample": 3} if kind == "resnet"
                 else {"size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3})
    (model_dir / "preprocessor_config.json").write_text(json.dumps(processor))
    return model_dir


def write_tiny_llama(out: Path, seed: int = 0) -> Path:
    """A tiny random Llama causal LM with MiniLM's (real) tokenizer: a decoder base without a 500 MB download.

    As in SmolLM2, the LM head is tied to the input embeddings.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from transferkit.models.catalog import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6").path)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=tokenizer.pad_token_id,
        max_position_embeddings=128, tie_word_embeddings=True))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def filler_sentences() -> list[str]:
    """Neutral news sentences: the Lee background corpus (300 documents) bundled with gensim 4.4.0's test data."""
    import re
    import zipfile

    from transferkit.assets import fetch_distribution

    with zipfile.ZipFile(fetch_distribution("gensim==4.4.0")) as archive:
        corpus = archive.read("gensim/test/test_data/lee_background.cor").decode("utf-8", errors="replace")
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+", corpus) if len(s.split()) >= 5]
    return sentences


def long_document_rows(count: int, *, seed: int, min_tokens: int = 300, max_tokens: int = 1500,
                       offset: int = 0) -> list[tuple[str, str]]:
    """``(document, label)`` pairs: filler sentences around ONE labelled movie sentence at a random position.

    Documents are about ``min_tokens``-``max_tokens`` MiniLM tokens long (1.3 tokens per word); the movie
    sentences are rows ``offset`` to ``offset + count`` of a seeded shuffle of ``builtin:movie-sentiment``,
    so disjoint offsets give disjoint splits.
    """
    table = load_builtin("builtin:movie-sentiment")
    movie = list(zip(table.column("text").to_pylist(), table.column("label").to_pylist(), strict=True))
    random.Random(1234).shuffle(movie)
    filler = filler_sentences()
    rng = random.Random(seed)
    rows = []
    for text, label in movie[offset: offset + count]:
        budget = rng.randint(min_tokens, max_tokens) / 1.3
        start = rng.randrange(len(filler))
        body: list[str] = []
        words = 0
        while words < budget:
            sentence = filler[(start + len(body)) % len(filler)]
            body.append(sentence)
            words += len(sentence.split())
        body.insert(rng.randint(0, len(body)), text)
        rows.append((" ".join(body), label))
    return rows


def write_long_document_slice(out: Path, train: int = 48, validation: int = 16, test: int = 16, seed: int = 0,
                              min_tokens: int = 60, max_tokens: int = 160) -> Path:
    """A prepared-dataset directory of :func:`long_document_rows` (short documents by default: quick tests)."""
    out.mkdir(parents=True, exist_ok=True)
    offset = 0
    for index, (split, count) in enumerate((("train", train), ("validation", validation), ("test", test))):
        rows = long_document_rows(count, seed=seed + index, min_tokens=min_tokens, max_tokens=max_tokens,
                                  offset=offset)
        offset += count
        pq.write_table(pa.table({
            "text": [t for t, _ in rows],
            "label": pa.array([MOVIE_LABELS.index(lbl) for _, lbl in rows], pa.int64()),
            "label_name": [lbl for _, lbl in rows],
        }), out / f"{split}.parquet")
    (out / "labels.json").write_text(json.dumps(MOVIE_LABELS))
    (out / "schema.json").write_text(json.dumps({
        "task": "text-classification", "source": "long documents", "text_column": "text",
        "text_pair_column": None, "label_column": "label", "group_column": None, "format_version": 1,
    }))
    (out / "stats.json").write_text(json.dumps({"rows": {"train": train, "validation": validation, "test": test}}))
    return out
