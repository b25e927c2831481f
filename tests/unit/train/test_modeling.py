import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from transferkit.errors import ModelError
from transferkit.models.catalog import resolve_model
from transferkit.models.loading import load_encoder, load_sequence_classifier, load_tokenizer
from transferkit.train.modeling import (
    MEAN_POOLING_MARKER,
    add_mean_pooling_layer,
    freeze_for_strategy,
    layer_layout,
    model_max_length,
    pretraining_pooling,
    resolve_pooling,
)
from transferkit.train.zeroshot import build_zero_shot_classifier, head_permutation, householder_to_ones

TEXTS = [
    "A gorgeous, witty, seductive movie.",
    "The plot is nothing but boilerplate cliches from start to finish, and the script is so bad it hurts.",
    "Dull.",
    "An engrossing portrait of a family in crisis, told with warmth and humour and wonderfully acted.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("minilm-l6")


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("minilm-l6").eval()


def _masked_mean(encoder, batch):
    with torch.no_grad():
        states = encoder(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return (states * mask).sum(1) / mask.sum(1)


def test_pooling_layer_outputs_the_normalised_masked_mean_despite_padding(tokenizer, encoder, tmp_path):
    model = load_sequence_classifier("minilm-l6", ["negative", "positive"])
    index = add_mean_pooling_layer(model)
    assert index == 6 and getattr(model.config, MEAN_POOLING_MARKER) == 6
    model.eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # the batch really is padded
    mean = _masked_mean(encoder, batch)
    with torch.no_grad():
        first_token = model.bert(**batch).last_hidden_state[:, 0]
    expected = torch.nn.functional.layer_norm(mean, (mean.shape[1],), eps=1e-12)
    # Residual h_cls is swamped by POOL_SCALE: relative error ~ |h_cls| / (4096 |m|), about 5e-4.
    relative = (first_token - expected).norm(dim=1) / expected.norm(dim=1)
    assert relative.max() < 2e-3, relative
    cosine = torch.nn.functional.cosine_similarity(first_token, expected, dim=1)
    assert cosine.min() > 0.99999
    # Each text alone (no padding) gives the same vector as inside the padded batch.
    single = tokenizer(TEXTS[2], return_tensors="pt")
    with torch.no_grad():
        alone = model.bert(**single).last_hidden_state[:, 0]
    assert torch.allclose(alone[0], first_token[2], atol=1e-4)
    # Saved and reloaded by plain from_pretrained: the same architecture, 7 layers.
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.num_hidden_layers == 7
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).logits, model(**batch).logits, atol=1e-5)


def test_zero_shot_package_reproduces_cosine_predictions(tokenizer, encoder, tmp_path):
    resolved = resolve_model("minilm-l6")
    labels = ["negative", "positive"]
    descriptions = {"negative": "a bad, boring movie", "positive": "a great, enjoyable movie"}
    model, info = build_zero_shot_classifier(
        resolved, tokenizer, labels, descriptions=descriptions, temperature=0.05, sample_texts=TEXTS * 8,
        check_texts=TEXTS, max_length=64,
    )
    assert info["argmax_agreement"] == 1.0
    model.save_pretrained(tmp_path)
    packaged = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    label_batch = tokenizer([descriptions[n] for n in labels], padding=True, return_tensors="pt")
    text_emb = torch.nn.functional.normalize(_masked_mean(encoder, batch), dim=1)
    label_emb = torch.nn.functional.normalize(_masked_mean(encoder, label_batch), dim=1)
    exact = text_emb @ label_emb.T / 0.05
    with torch.no_grad():
        logits = packaged(**batch).logits
    assert torch.equal(logits.argmax(1), exact.argmax(1))
    assert logits.argmax(1).tolist() == [1, 0, 0, 1]
    # Differences between label logits (what softmax sees) match exact cosine closely.
    margin = (logits[:, 1] - logits[:, 0]) - (exact[:, 1] - exact[:, 0])
    assert margin.abs().max() < 0.05 * (exact[:, 1] - exact[:, 0]).abs().max()


def test_householder_maps_the_direction_onto_all_ones():
    v = torch.nn.functional.normalize(torch.randn(16, generator=torch.Generator().manual_seed(0)), dim=0)
    h = householder_to_ones(v)
    assert torch.allclose(h @ v, torch.full((16,), 1 / math.sqrt(16)), atol=1e-6)
    assert torch.allclose(h @ h.T, torch.eye(16), atol=1e-6)


def test_layout_and_unfreezing_limits():
    model = load_sequence_classifier("minilm-l6", ["a", "b", "c"])
    layout = layer_layout(model)
    assert (layout.layers_prefix, layout.num_layers, layout.pooling_layer) == ("bert.encoder.layer", 6, None)
    assert layout.classify("bert.encoder.layer.3.output.dense.weight") == ("layer", 3)
    assert layout.classify("bert.embeddings.word_embeddings.weight") == ("embeddings", None)
    assert layout.classify("bert.pooler.dense.weight") == ("head", None)
    assert layout.classify("classifier.bias") == ("head", None)
    with pytest.raises(ModelError, match="^unfreeze_top_layers: 7 exceeds the model's 6 layers"):
        freeze_for_strategy(model, "feature_extraction", 7)
    info = freeze_for_strategy(model, "feature_extraction", 6)
    assert info["trainable_layers"] == [0, 1, 2, 3, 4, 5] and not info["base_frozen"]
    info = freeze_for_strategy(load_sequence_classifier("minilm-l6", ["a", "b"]), "feature_extraction", 0)
    assert info["base_frozen"]


def test_pooling_resolution_and_limits(tokenizer):
    resolved = resolve_model("minilm-l6")
    assert pretraining_pooling(resolved) == "mean"
    assert resolve_pooling("auto", resolved) == "mean"
    assert resolve_pooling("cls", resolved) == "cls"
    assert model_max_length(load_encoder("minilm-l6").config, tokenizer) == 512


def test_head_permutation():
    assert head_permutation(["NEG", "POS"], ["neg", "pos"]) == [0, 1]
    assert head_permutation(["pos", "neg"], ["neg", "pos"]) == [1, 0]
    assert head_permutation(["a", "b"], ["a", "c"]) is None
    assert head_permutation(["a", "b", "c"], ["a", "b"]) is None
