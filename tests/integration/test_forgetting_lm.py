"""Forgetting of decoder bases: perplexity on the real Lee texts, base LM head on the fine-tuned backbone.

The base is a tiny Llama built here (MiniLM's real tokenizer, 40 LM steps on the Lee texts so that it has a
language-modelling skill to lose); "fine-tuned" models are sequence classifiers
whose backbone is the base's, or the base's with known changes, so the expected perplexities can be computed
independently, one text at a time with transformers' own causal-LM loss.
"""

import json
import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForSequenceClassification

from tests.helpers import write_tiny_llama
from transferkit.errors import ModelError
from transferkit.evaluate import ForgettingConfig, check_forgetting
from transferkit.evaluate.sources import load_source

pytestmark = pytest.mark.integration
MAX_LENGTH = 64


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """The tiny Llama given some real language-modelling skill: 40 Adam steps on the Lee texts."""
    path = write_tiny_llama(tmp_path_factory.mktemp("llama") / "base")
    lm = AutoModelForCausalLM.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    texts = _lee_texts()
    optimizer = torch.optim.Adam(lm.parameters(), lr=1e-2)
    torch.manual_seed(0)
    lm.train()
    for step in range(40):
        batch = tokenizer([texts[(step * 8 + i) % len(texts)] for i in range(8)], truncation=True,
                          max_length=MAX_LENGTH, padding=True, return_tensors="pt")
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        lm(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    lm.save_pretrained(path)
    return path


def _classifier(base_dir, out, *, perturb=None):
    """A two-label classifier on the base backbone; ``perturb(model)`` edits it in place before saving."""
    torch.manual_seed(1)
    model = LlamaForSequenceClassification.from_pretrained(base_dir, num_labels=2)
    if perturb is not None:
        with torch.no_grad():
            perturb(model)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(out)
    (out / "labels.json").write_text(json.dumps(["negative", "positive"]))
    return out


def _reference_perplexity(lm, tokenizer, texts):
    """Token-weighted perplexity, one unpadded text at a time, from transformers' mean causal-LM loss."""
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")["input_ids"]
            n = ids.shape[1] - 1
            nll += float(lm(input_ids=ids, labels=ids).loss) * n
            tokens += n
    return math.exp(nll / tokens)


def _lee_texts():
    return [t for t in load_source("builtin:lee-similarity").texts if t.strip()]


def test_unchanged_backbone_keeps_all_of_its_language_modelling(base_dir, tmp_path, one_torch_thread):
    model = _classifier(base_dir, tmp_path / "same")
    result = check_forgetting(ForgettingConfig(base=str(base_dir), model=model, out_dir=tmp_path / "out",
                                               max_length=MAX_LENGTH, progress=False))
    # A decoder base is measured by perplexity without being asked.
    assert result.mode == "perplexity" and result.metric == "inverse_perplexity"
    assert result.retention == pytest.approx(1.0, abs=1e-6)
    assert result.details["perplexity"]["base"] < 2000  # far below the uniform 30,522 of the random init
    lm = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    expected = _reference_perplexity(lm, AutoTokenizer.from_pretrained(base_dir), _lee_texts())
    # Padded batches give the same perplexity as unpadded texts one by one.
    assert result.details["perplexity"]["base"] == pytest.approx(expected, rel=1e-4)
    assert result.base_score == pytest.approx(1 / expected, rel=1e-4)
    assert result.details["n_texts"] == len(_lee_texts()) and result.details["truncated_texts"] > 0
    saved = json.loads(result.forgetting_path.read_text())
    assert saved["mode"] == "perplexity" and saved["details"]["perplexity"]["model"] == pytest.approx(expected,
                                                                                                       rel=1e-4)
    report = result.report_md.read_text()
    assert "base model's LM head on the fine-tuned backbone" in report and "Perplexity on the reference texts" in report


def test_changed_backbone_is_measured_under_the_base_lm_head(base_dir, tmp_path, one_torch_thread):
    def perturb(model):
        torch.manual_seed(2)
        for layer in model.model.layers:
            layer.mlp.down_proj.weight.add_(0.5 * torch.randn_like(layer.mlp.down_proj.weight))
        # Every token read as its neighbour in the vocabulary; with tied embeddings, a changed input embedding
        # must not drag the (base) LM head along.
        embeddings = model.model.embed_tokens.weight
        embeddings.copy_(embeddings.roll(1, dims=0))

    model = _classifier(base_dir, tmp_path / "changed", perturb=perturb)
    result = check_forgetting(ForgettingConfig(base=str(base_dir), model=model, out_dir=tmp_path / "out",
                                               max_length=MAX_LENGTH, min_retention=0.9, progress=False))
    # Expected: the fine-tuned backbone with the base's (untied) LM head, computed independently.
    lm = AutoModelForCausalLM.from_pretrained(base_dir).eval()
    base_head = lm.lm_head.weight.detach().clone()
    classifier = LlamaForSequenceClassification.from_pretrained(model).eval()
    lm.model.load_state_dict(classifier.model.state_dict())
    lm.lm_head.weight = torch.nn.Parameter(base_head)
    expected = _reference_perplexity(lm, AutoTokenizer.from_pretrained(base_dir), _lee_texts())
    assert result.details["perplexity"]["model"] == pytest.approx(expected, rel=1e-4)
    ppl = result.details["perplexity"]
    assert ppl["model"] > ppl["base"] and result.retention == pytest.approx(ppl["base"] / ppl["model"], rel=1e-6)
    assert not result.passed and result.reason.startswith("forgetting gate failed: retention")
    assert result.forgetting_path.is_file()


def test_perplexity_mode_refuses_an_encoder_base_and_a_misfit_backbone(base_dir, tmp_path):
    model = _classifier(base_dir, tmp_path / "model")
    with pytest.raises(ModelError, match=r"^minilm-l6: perplexity mode needs a decoder base .*not 'bert'$"):
        check_forgetting(ForgettingConfig(base="minilm-l6", model=model, out_dir=tmp_path / "a", mode="perplexity",
                                          progress=False))
    assert not (tmp_path / "a").exists()
    other = write_tiny_llama(tmp_path / "other-base")
    config = json.loads((other / "config.json").read_text())
    wider = LlamaForSequenceClassification(type(AutoModelForCausalLM.from_pretrained(other).config)(
        **{**config, "hidden_size": 64, "intermediate_size": 96, "num_labels": 2}))
    wider.save_pretrained(tmp_path / "wider")
    with pytest.raises(ModelError, match=r"wider: backbone does not fit the base .* \(shapes differ, e\.g\. "):
        check_forgetting(ForgettingConfig(base=str(base_dir), model=tmp_path / "wider", out_dir=tmp_path / "b",
                                          max_length=MAX_LENGTH, progress=False))
    assert not (tmp_path / "b").exists()
