import pytest
import torch

from transferkit.models.loading import load_sequence_classifier
from transferkit.train.modeling import add_mean_pooling_layer, freeze_for_strategy, reinit_pooler
from transferkit.train.optim import L2SPPenalty

LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def minilm():
    model = load_sequence_classifier("minilm-l6", LABELS)
    add_mean_pooling_layer(model)
    reinit_pooler(model, 0)
    return model


def _optimizer(model, tmp_path, *, strategy="full", unfreeze=0, lr=1e-4, head_lr=2e-3, llrd=0.8, l2sp=None):
    from transformers import TrainingArguments

    from transferkit.train.trainer import TransferTrainer

    layout = freeze_for_strategy(model, strategy, unfreeze)["layout"]
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=lr, weight_decay=0.01, use_cpu=True,
                             report_to="none")
    trainer = TransferTrainer(model=model, args=args, classify=layout.classify, num_layers=layout.num_layers,
                              head_learning_rate=head_lr, llrd=llrd,
                              l2sp=L2SPPenalty(model, l2sp, layout.classify) if l2sp else None)
    return trainer.create_optimizer(), layout


def _groups_by_param(optimizer, model):
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: group for group in optimizer.param_groups for p in group["params"]}


def test_llrd_gives_each_layer_base_lr_times_factor_to_the_depth(minilm, tmp_path):
    optimizer, layout = _optimizer(minilm, tmp_path)
    by_name = _groups_by_param(optimizer, minilm)
    num_layers = layout.num_layers
    assert num_layers == 6  # the pooling layer is not a trainable layer
    for i in range(num_layers):
        layer_params = [n for n in by_name if n.startswith(f"bert.encoder.layer.{i}.")]
        assert layer_params
        for name in layer_params:
            assert by_name[name]["lr"] == pytest.approx(1e-4 * 0.8 ** (num_layers - 1 - i)), name
    embeddings = [n for n in by_name if n.startswith("bert.embeddings.")]
    assert embeddings
    for name in embeddings:
        assert by_name[name]["lr"] == pytest.approx(1e-4 * 0.8**num_layers)
    lowest_layer_lr = by_name["bert.encoder.layer.0.attention.self.query.weight"]["lr"]
    assert by_name["bert.embeddings.word_embeddings.weight"]["lr"] < lowest_layer_lr
    for name in ("classifier.weight", "classifier.bias", "bert.pooler.dense.weight"):
        assert by_name[name]["lr"] == pytest.approx(2e-3)
    # The Trainer's decay rule is kept: no weight decay on biases and LayerNorm weights.
    assert by_name["bert.encoder.layer.3.output.LayerNorm.weight"]["weight_decay"] == 0.0
    assert by_name["bert.encoder.layer.3.output.dense.bias"]["weight_decay"] == 0.0
    assert by_name["bert.encoder.layer.3.output.dense.weight"]["weight_decay"] == 0.01
    # The fixed pooling layer is frozen and absent from the optimizer.
    assert not any(n.startswith("bert.encoder.layer.6.") for n in by_name)
    # The Trainer logs the first group's LR: it is the top layer's.
    assert optimizer.param_groups[0]["group"] == "layer.5"


def test_feature_extraction_optimizes_only_the_head_and_unfrozen_top_layers(minilm, tmp_path):
    optimizer, _ = _optimizer(minilm, tmp_path, strategy="feature_extraction", unfreeze=2)
    by_name = _groups_by_param(optimizer, minilm)
    layers = {int(n.split(".")[3]) for n in by_name if n.startswith("bert.encoder.layer.")}
    assert layers == {4, 5}
    assert not any(n.startswith("bert.embeddings.") for n in by_name)
    assert by_name["bert.encoder.layer.4.attention.self.key.weight"]["lr"] == pytest.approx(1e-4 * 0.8)
    assert by_name["classifier.weight"]["lr"] == pytest.approx(2e-3)
    minilm.train()
    assert minilm.bert.embeddings.training is False
    assert minilm.bert.encoder.layer[0].training is False  # frozen layers stay in eval mode (no dropout)
    assert minilm.bert.encoder.layer[6].training is False  # the pooling layer too
    assert minilm.bert.encoder.layer[5].training is True
    assert minilm.classifier.training is True
    minilm.eval()


def test_l2sp_penalty_is_zero_at_start_and_grows_with_drift(minilm, tmp_path):
    freeze_for_strategy(minilm, "full")
    layout = freeze_for_strategy(minilm, "full")["layout"]
    penalty = L2SPPenalty(minilm, 0.5, layout.classify)
    assert "classifier.weight" not in penalty.names  # the new head is not pulled anywhere
    assert "bert.encoder.layer.0.attention.self.query.weight" in penalty.names
    assert penalty(minilm).item() == 0.0
    weight = minilm.bert.encoder.layer[2].output.dense.weight
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            weight.add_(0.01)
        small = penalty(minilm).item()
        with torch.no_grad():
            weight.add_(0.02)
        large = penalty(minilm).item()
        assert small == pytest.approx(0.5 * 0.5 * weight.numel() * 0.01**2, rel=1e-3)
        assert large == pytest.approx(9 * small, rel=1e-3)
        value = penalty(minilm)
        value.backward()
        assert torch.allclose(weight.grad, torch.full_like(weight, 0.5 * 0.03), atol=1e-5)
    finally:
        with torch.no_grad():
            weight.copy_(original)
        minilm.zero_grad(set_to_none=True)


def test_l2sp_replaces_weight_decay_on_shared_weights(minilm, tmp_path):
    optimizer, _ = _optimizer(minilm, tmp_path, l2sp=0.1)
    by_name = _groups_by_param(optimizer, minilm)
    assert by_name["bert.encoder.layer.3.output.dense.weight"]["weight_decay"] == 0.0
    assert by_name["classifier.weight"]["weight_decay"] == 0.01
