"""Strategy lora for the generative tasks on a tiny random Llama: adapter-only training, target-only loss, a
merged plain model directory plus the unmerged peft adapter beside it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.generative import MAX_LENGTH, aclsum_pairs, tiny_llama
from transferkit.tasks import model_task
from transferkit.train.config import TrainConfig
from transferkit.train.run import FineTuneRecipe, run_training, setup_run


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory, one_torch_thread: None) -> Path:
    return tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def pairs(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return aclsum_pairs(base, tmp_path_factory.mktemp("aclsum") / "prepared")


def _config(data: Path, model: Path, out: Path, **options: object) -> TrainConfig:
    values = {"strategy": "lora", "max_steps": 3, "batch_size": 4, "max_length": MAX_LENGTH, "learning_rate": 1e-2,
              "max_new_tokens": 6, "logging_steps": 1, **options}
    return TrainConfig(data_dir=data, model=str(model), out_dir=out, **values)


def test_lora_trains_the_adapter_only_with_the_loss_on_target_tokens(base: Path, pairs: Path, tmp_path: Path) -> None:
    import torch
    import torch.nn.functional as F

    ctx = setup_run(_config(pairs, base, tmp_path / "m"))
    recipe = FineTuneRecipe(ctx)
    model, _ = recipe.setup_model()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # the LM head (tied embeddings) stays frozen
    n_trainable, n_total = recipe.parameters
    assert n_trainable == recipe.lora["adapter_parameters"] and n_trainable / n_total < 0.01
    assert recipe.lora["target_modules"] == ["k_proj", "o_proj", "q_proj", "v_proj"]
    train, _ = ctx.side.datasets(ctx)
    batch = ctx.side.collator("cpu")([train[0], train[1]])
    out = model(**batch)
    logits, labels = out.logits[:, :-1], batch["labels"][:, 1:]
    assert (labels == -100).sum() > (labels != -100).sum()  # the (long) prompts are masked
    manual = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    assert torch.allclose(out.loss, manual, atol=1e-5)
    out.loss.backward()
    assert all(p.grad is None for n, p in model.named_parameters() if "lora_" not in n)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def test_lora_writes_a_merged_model_that_generates_and_the_unmerged_adapter(base: Path, pairs: Path,
                                                                             tmp_path: Path) -> None:
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "model"
    result = run_training(_config(pairs, base, out))
    assert result.global_step == 3 and result.best_metric_name == "loss"
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["lora"]["adapter_parameters"] == result.trainable_params
    assert result.trainable_params / result.total_params < 0.01
    merged_weights = load_file(out / "model.safetensors")
    assert not any("lora_" in k for k in merged_weights)
    base_weights = load_file(base / "model.safetensors")
    changed = [k for k in base_weights if not torch.equal(base_weights[k], merged_weights[k])]
    assert changed and all(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"))
                           for k in changed)  # only the adapted projections moved; embeddings/LM head did not
    assert model_task(out).name == "summarization"

    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and adapter["base_model_name_or_path"] == str(base)
    assert not adapter.get("modules_to_save")
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), out / "adapter").eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer(["the approach of this paper"], return_tensors="pt", return_token_type_ids=False)
    with torch.no_grad():
        assert torch.allclose(merged(**ids).logits, peft_model(**ids).logits, atol=1e-5)
        generated = merged.generate(**ids)  # the saved generation settings: greedy, 6 new tokens
    assert generated.shape[1] == ids["input_ids"].shape[1] + 6 or generated[0, -1] == merged.config.eos_token_id
