"""A tiny random Llama, a few real aclsum pairs and a briefly fine-tuned model: the generative test inputs.

The tokenizer is the offline MiniLM WordPiece one given an EOS and a chat template (as in the SFT tests).
"""

from __future__ import annotations

from pathlib import Path

CHAT_TEMPLATE = ("{% for m in messages %}[CLS] {{ m['role'] }}: {{ m['content'] }} [SEP]{% endfor %}"
                 "{% if add_generation_prompt %} assistant:{% endif %}")
MAX_LENGTH = 96


def tiny_llama(out: Path) -> Path:
    """Write a 2-layer, 32-wide random LlamaForCausalLM with a 256-token context to ``out``."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from transferkit.models.catalog import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm-l6").path)
    tokenizer.eos_token = "[SEP]"
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(out)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.sep_token_id,
                         bos_token_id=tokenizer.cls_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    return out


def aclsum_pairs(model: Path, out: Path, rows: int = 24) -> Path:
    """Prepare ``rows`` builtin:aclsum pairs for summarization with ``model``'s tokenizer."""
    from transferkit.data.prepare import DataPrepConfig, prepare_dataset

    prepare_dataset(DataPrepConfig(dataset="builtin:aclsum", out=out, task="summarization", model=str(model),
                                   max_length=MAX_LENGTH, max_rows=rows))
    return out


def fine_tuned(data: Path, model: Path, out: Path, max_new_tokens: int = 12) -> Path:
    """Three SFT steps (the saved generation settings: greedy, ``max_new_tokens``)."""
    from transferkit.train.config import TrainConfig
    from transferkit.train.run import run_training

    run_training(TrainConfig(data_dir=data, model=str(model), out_dir=out, strategy="full", max_steps=3,
                             batch_size=4, max_length=MAX_LENGTH, learning_rate=3e-3, max_new_tokens=max_new_tokens,
                             logging_steps=1))
    return out


def tiny_generative_export(root: Path) -> tuple[Path, Path]:
    """A tiny Llama fine-tuned on aclsum pairs and exported with ONNX Runtime GenAI: (model dir, export dir)."""
    from transferkit.export import export_model
    from transferkit.export.config import ExportConfig

    llama = tiny_llama(root / "llama")
    pairs = aclsum_pairs(llama, root / "pairs")
    model = fine_tuned(pairs, llama, root / "model")
    export_model(ExportConfig(model_dir=model, data_dir=pairs, out_dir=root / "onnx", threads=1, max_eval_samples=2,
                              max_drop=100.0))
    return model, root / "onnx"
