"""Loading a sequence classifier for new labels: the head starts afresh unless the labels are its own."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transferkit.models.loading import head_modules, load_sequence_classifier


@pytest.fixture(scope="module")
def headed_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT classifier with a trained-looking 2-way head for labels ``cat``/``dog``."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=2,
                        id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1})
    torch.manual_seed(0)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.weight.fill_(0.5)
        model.classifier.bias.fill_(0.25)
    path = tmp_path_factory.mktemp("headed")
    model.save_pretrained(path, safe_serialization=True)
    return path


def _head(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": value.detach().clone()
            for name, module in head_modules(model) for key, value in module.state_dict().items()}


def test_same_size_head_for_other_labels_is_reinitialised(headed_model: Path) -> None:
    model = load_sequence_classifier(headed_model, ["negative", "positive"])
    head = _head(model)
    assert set(head) == {"classifier.weight", "classifier.bias"}
    assert not torch.any(head["classifier.weight"] == 0.5)
    assert torch.all(head["classifier.bias"] == 0.0)
    assert model.config.id2label == {0: "negative", 1: "positive"}


def test_head_for_its_own_labels_keeps_its_weights(headed_model: Path) -> None:
    for labels in (["cat", "dog"], None):
        head = _head(load_sequence_classifier(headed_model, labels))
        assert torch.all(head["classifier.weight"] == 0.5)
        assert torch.all(head["classifier.bias"] == 0.25)


def test_base_model_weights_are_kept_when_the_head_is_reinitialised(headed_model: Path) -> None:
    own = load_sequence_classifier(headed_model, ["cat", "dog"]).state_dict()
    other = load_sequence_classifier(headed_model, ["negative", "positive"]).state_dict()
    body = [key for key in own if not key.startswith("classifier.")]
    assert body and all(torch.equal(own[key], other[key]) for key in body)
