"""``--chunk-loss document``: whole documents per batch, the loss on their aggregated window logits."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertForSequenceClassification, DataCollatorWithPadding

from tests.helpers import long_document_rows
from transferkit.data.long_text import TextInputs, aggregate, aggregate_tensor
from transferkit.errors import ConfigError
from transferkit.models.loading import load_tokenizer
from transferkit.train import TrainConfig
from transferkit.train.data import DocumentCollator, DocumentWindows, Split, TokenizedDataset
from transferkit.train.trainer import TransferTrainer


@pytest.mark.parametrize("how", ["mean", "max"])
def test_tensor_aggregation_matches_the_evaluation_one_and_passes_gradients(how):
    rng = np.random.default_rng(0)
    logits = torch.tensor(rng.normal(size=(7, 3)), requires_grad=True)
    docs = np.array([0, 0, 1, 2, 2, 2, 1])
    out = aggregate_tensor(logits, torch.tensor(docs), 3, how)
    np.testing.assert_allclose(out.detach().numpy(), aggregate(logits.detach().numpy(), docs, 3, how), atol=1e-12)
    out.sum().backward()
    expected = np.zeros((7, 3))
    for d in range(3):
        rows = np.flatnonzero(docs == d)
        if how == "mean":
            expected[rows] = 1 / len(rows)
        else:  # the gradient goes to each class's strongest window only
            expected[rows[np.argmax(logits.detach().numpy()[rows], axis=0)], range(3)] = 1
    np.testing.assert_allclose(logits.grad.numpy(), expected)


@pytest.fixture(scope="module")
def windows():
    rows = long_document_rows(5, seed=0, min_tokens=40, max_tokens=120, offset=0)
    split = Split("train", [t for t, _ in rows], None, [i % 2 for i in range(5)])
    spec = TextInputs(max_length=24, truncation="head", long_documents="chunk", stride=4, aggregation="max",
                      special_tokens=2).check()
    return TokenizedDataset(split, load_tokenizer("minilm-l6"), 24, text_inputs=spec)


def test_documents_hold_all_their_windows_and_collate_with_window_positions(windows):
    docs = DocumentWindows(windows)
    assert len(docs) == 5 and docs.labels == [0, 1, 0, 1, 0]
    assert sorted(i for group in docs.groups for i in group) == list(range(len(windows)))
    assert docs.lengths == [sum(windows.lengths[i] for i in group) for group in docs.groups]
    collate = DocumentCollator(DataCollatorWithPadding(windows.tokenizer))
    batch = collate([docs[1], docs[3]])
    sizes = [len(docs.groups[1]), len(docs.groups[3])]
    assert batch["input_ids"].shape[0] == sum(sizes) and min(sizes) > 1
    assert batch["doc_ids"].tolist() == [0] * sizes[0] + [1] * sizes[1]
    assert batch["labels"].tolist() == [1, 1]
    plain = collate([windows[0], windows[1]])  # validation windows pass through
    assert "doc_ids" not in plain and plain["labels"].tolist() == [0, 0]


def test_document_loss_is_cross_entropy_of_the_aggregated_window_logits(windows, tmp_path):
    from transformers import TrainingArguments

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64)).eval()
    docs = DocumentWindows(windows)
    batch = DocumentCollator(DataCollatorWithPadding(windows.tokenizer))([docs[0], docs[1], docs[2]])
    trainer = TransferTrainer(model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True,
                                                                 report_to="none"),
                              document_aggregation="max")
    loss = trainer.compute_loss(model, dict(batch))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"]).logits
    per_doc = torch.stack([logits[batch["doc_ids"] == d].max(dim=0).values for d in range(3)])
    assert loss.item() == pytest.approx(F.cross_entropy(per_doc, batch["labels"]).item(), abs=1e-6)
    assert loss.item() != pytest.approx(F.cross_entropy(logits, batch["labels"][batch["doc_ids"]]).item(), abs=1e-4)


def test_document_loss_needs_chunked_documents(tmp_path):
    with pytest.raises(ConfigError, match="^chunk_loss: document applies to --long-documents chunk$"):
        TrainConfig(data_dir=tmp_path, model="minilm-l6", strategy="full", out_dir=tmp_path / "m",
                    chunk_loss="document")
    with pytest.raises(ConfigError, match="^chunk_loss: unknown value 'doc'; expected one of window, document$"):
        TrainConfig(data_dir=tmp_path, model="minilm-l6", strategy="full", out_dir=tmp_path / "m",
                    long_documents="chunk", chunk_loss="doc")
