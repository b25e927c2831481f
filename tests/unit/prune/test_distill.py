"""The distillation loss of the recovery fine-tune, checked against a hand computation."""

import copy

import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

from transferkit.prune.distill import DistillTrainer


def _models():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                        num_labels=2)
    teacher = BertForSequenceClassification(config)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.classifier.weight.add_(torch.randn_like(student.classifier.weight))
    return teacher, student


def test_loss_mixes_temperature_scaled_kl_and_task_loss(tmp_path):
    teacher, student = _models()
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    trainer = DistillTrainer(model=student, args=args, teacher=teacher, alpha=0.7, temperature=3.0)
    batch = {"input_ids": torch.randint(1, 50, (4, 7), generator=torch.Generator().manual_seed(1)),
             "attention_mask": torch.ones(4, 7, dtype=torch.long), "labels": torch.tensor([0, 1, 1, 0])}
    student.train()
    loss = trainer.compute_loss(student, dict(batch))
    features = {k: v for k, v in batch.items() if k != "labels"}
    s, t = student(**features).logits, teacher(**features).logits
    kl = F.kl_div(F.log_softmax(s / 3, -1), F.softmax(t / 3, -1), reduction="batchmean") * 9
    expected = 0.7 * kl + 0.3 * F.cross_entropy(s, batch["labels"])
    assert kl > 0 and torch.allclose(loss, expected, atol=1e-6)
    assert not any(p.requires_grad for p in teacher.parameters())

    same = DistillTrainer(model=copy.deepcopy(teacher), args=args, teacher=teacher, alpha=1.0, temperature=2.0)
    same.model.train()
    assert abs(float(same.compute_loss(same.model, dict(batch)))) < 1e-6  # a student equal to its teacher
