"""Structured pruning on tiny, seeded transformers models: plans, importance, exact slicing, reload."""

import math

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
    ResNetConfig,
    ResNetForImageClassification,
)

from transferkit.errors import ConfigError, ModelError
from transferkit.prune import PruneConfig
from transferkit.prune.report import Variant, pareto_front, pareto_rows
from transferkit.prune.structure import (
    MEAN_POOLING_MARKER,
    apply_plan,
    encoder_layout,
    ffn_importance,
    plan_pruning,
)


def tiny_bert(layers: int = 4, pooling_layer: bool = False) -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32, num_labels=2)
    if pooling_layer:
        setattr(config, MEAN_POOLING_MARKER, layers - 1)
    return BertForSequenceClassification(config).eval()


def batch(seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(1, 50, (4, 10), generator=g),
            "attention_mask": torch.ones(4, 10, dtype=torch.long), "labels": torch.tensor([0, 1, 1, 0])}


def logits(model, b) -> torch.Tensor:
    with torch.no_grad():
        return model(**{k: v for k, v in b.items() if k != "labels"}).logits


@pytest.mark.parametrize("kwargs, field", [
    ({"sparsity": 0.0}, "sparsity"), ({"sparsity": 1.0}, "sparsity"), ({"sparsity": 1.5}, "sparsity"),
    ({"sparsity": math.nan}, "sparsity"), ({}, "sparsity"), ({"sparsity": 0.5, "keep_ffn": 8}, "sparsity"),
    ({"keep_layers": 0}, "keep_layers"), ({"keep_heads": 0}, "keep_heads"), ({"keep_ffn": -1}, "keep_ffn"),
    ({"keep_ffn": 8, "distill_alpha": 1.5}, "distill_alpha"),
    ({"keep_ffn": 8, "distill_temperature": 0}, "distill_temperature"),
])
def test_config_rejects_bad_targets_naming_the_field(tmp_path, kwargs, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        PruneConfig(tmp_path / "m", tmp_path / "d", tmp_path / "o", **kwargs)


def test_plan_refuses_counts_the_model_cannot_take():
    layout = encoder_layout(tiny_bert(), "tiny")
    with pytest.raises(ConfigError, match="^keep_layers: 5 is more than the 4"):
        plan_pruning(layout, keep_layers=5)
    with pytest.raises(ConfigError, match="^keep_ffn: 65 is more than the 64"):
        plan_pruning(layout, keep_ffn=65)
    with pytest.raises(ConfigError, match="^keep_heads: 3 is more than the 2"):
        plan_pruning(layout, keep_heads=3)
    with pytest.raises(ConfigError, match="^keep_heads: 1 < 2 cannot be saved"):
        plan_pruning(layout, keep_heads=1)


def test_sparsity_plan_narrows_feed_forward_first_then_drops_layers():
    config = BertConfig(vocab_size=50, hidden_size=64, num_hidden_layers=6, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=32)
    layout = encoder_layout(BertForSequenceClassification(config), "tiny")
    narrow = plan_pruning(layout, sparsity=0.3)
    assert narrow.keep_layers == 6 and narrow.keep_ffn < 256
    assert abs((1 - narrow.kept_fraction) - 0.3) < 0.06
    deep = plan_pruning(layout, sparsity=0.7)
    assert deep.keep_layers < 6 and deep.keep_ffn >= 64
    assert abs((1 - deep.kept_fraction) - 0.7) < 0.08
    with pytest.raises(ConfigError, match="^sparsity: 0.99 removes more"):
        plan_pruning(layout, sparsity=0.99)


def test_unsupported_model_kinds_fail_with_one_line():
    cnn = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]))
    with pytest.raises(ModelError, match="model type 'resnet' cannot be pruned"):
        encoder_layout(cnn, "cnn-dir")


def test_importance_is_zero_exactly_for_neurons_that_cannot_change_the_output():
    model = tiny_bert()
    layout = encoder_layout(model, "tiny")
    with torch.no_grad():
        layout.ffn(1)[2].weight[:, :10] = 0  # neurons 0-9 of layer 1 feed nothing downstream
    scores = ffn_importance(model, layout, [batch(1), batch(2)])
    assert scores.shape == (4, 64)
    assert torch.all(scores[1, :10] == 0)
    assert torch.all(scores[1, 10:] > 0)
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_slicing_is_exact_for_dead_neurons_and_reloads_with_from_pretrained(tmp_path):
    model = tiny_bert()
    layout = encoder_layout(model, "tiny")
    with torch.no_grad():
        for i in range(4):
            layout.ffn(i)[2].weight[:, 32:] = 0  # the top half of every layer's neurons is dead
    b = batch()
    expected = logits(model, b)
    importance = ffn_importance(model, layout, [batch(1)])
    plan = plan_pruning(layout, keep_ffn=32)
    apply_plan(model, layout, plan, importance)
    assert model.config.intermediate_size == 32
    assert torch.allclose(logits(model, b), expected, atol=1e-6)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert reloaded.config.intermediate_size == 32
    assert reloaded.bert.encoder.layer[0].intermediate.dense.out_features == 32
    assert torch.allclose(logits(reloaded, b), expected, atol=1e-6)


def test_dropping_top_layers_keeps_the_pooling_layer_last(tmp_path):
    model = tiny_bert(layers=5, pooling_layer=True)
    layout = encoder_layout(model, "tiny")
    assert layout.prunable == [0, 1, 2, 3]
    pooling = model.bert.encoder.layer[4]
    plan = plan_pruning(layout, keep_layers=2)
    apply_plan(model, layout, plan, torch.ones(5, 64))
    assert model.config.num_hidden_layers == 3
    assert getattr(model.config, MEAN_POOLING_MARKER) == 2
    assert model.bert.encoder.layer[2] is pooling
    assert plan.encoder_parameters_after * 2 == plan.encoder_parameters_before
    b = batch()
    expected = logits(model, b)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert len(reloaded.bert.encoder.layer) == 3
    assert torch.allclose(logits(reloaded, b), expected, atol=1e-6)


def test_pareto_front_marks_only_undominated_variants():
    variants = [Variant("fp32", 100, 10.0, 0.85), Variant("int8", 25, 5.0, 0.85),
                Variant("pruned fp32", 70, 6.0, 0.84), Variant("pruned int8", 18, 3.0, 0.84)]
    assert pareto_front(variants) == {"int8", "pruned int8"}
    rows = pareto_rows(variants, "fp32")
    assert rows[3][3] == "3.33x" and rows[3][5] == "-1.00" and rows[3][6] == "yes" and rows[0][6] == ""
