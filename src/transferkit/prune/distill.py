"""Recovery fine-tune of a pruned model by distillation from the unpruned one (Hinton et al. 2015).

The loss is ``alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * task loss``; the
``T^2`` keeps the soft term's gradients on the task loss's scale. It is the stock HF ``Trainer`` loop through
:class:`transferkit.train.trainer.TransferTrainer` (seeded length grouping, LR groups); only ``compute_loss``
changes.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from transferkit.train.trainer import TransferTrainer

logger = logging.getLogger(__name__)


class DistillTrainer(TransferTrainer):
    """``TransferTrainer`` whose loss mixes the task loss with a KL to a frozen teacher's logits.

    Args:
        *args: Passed to :class:`TransferTrainer`.
        teacher: The unpruned model (put in eval mode, never updated).
        alpha: Weight of the distillation term in [0, 1].
        temperature: Softmax temperature.
        **kwargs: Passed to :class:`TransferTrainer`.

    """

    def __init__(self, *args: Any, teacher: Any, alpha: float, temperature: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.alpha = alpha
        self.temperature = temperature

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """Task loss (TransferTrainer's) mixed with the temperature-scaled KL to the teacher."""
        import torch
        import torch.nn.functional as F

        features = {k: v for k, v in inputs.items() if k != "labels"}
        task_loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        if self.alpha == 0 or not model.training:
            return (task_loss, outputs) if return_outputs else task_loss
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        if self.teacher.device != logits.device:
            self.teacher.to(logits.device)
        with torch.no_grad():
            teacher_logits = self.teacher(**features).logits.float()
        t = self.temperature
        kl = F.kl_div(F.log_softmax(logits.float() / t, dim=-1), F.log_softmax(teacher_logits / t, dim=-1),
                      reduction="batchmean", log_target=True) * (t * t)
        loss = self.alpha * kl + (1 - self.alpha) * task_loss
        return (loss, outputs) if return_outputs else loss


def recover(student: Any, teacher: Any, train_ds: Any, collator: Any, work_dir: Path, *, alpha: float,
            temperature: float, learning_rate: float, batch_size: int, epochs: float, max_steps: int | None,
            seed: int, train_lengths: list[int] | None = None) -> dict[str, Any]:
    """Fine-tune ``student`` in place by distillation; return the Trainer's training metrics.

    Args:
        student: The pruned model.
        teacher: The unpruned model.
        train_ds: Training dataset (items with ``labels``).
        collator: Its data collator.
        work_dir: Scratch directory for the Trainer (nothing is kept there).
        alpha: Distillation weight.
        temperature: Distillation temperature.
        learning_rate: Peak learning rate (linear decay, 6% warmup).
        batch_size: Per-device batch size.
        epochs: Epochs (ignored when ``max_steps`` is set).
        max_steps: Optimizer steps, or None.
        seed: Seed of data order and dropout.
        train_lengths: Token lengths for length-grouped batches, or None.

    """
    import math

    from transformers import TrainingArguments
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from transferkit.train.callbacks import LoggingCallback, QuietProgressCallback
    from transferkit.train.side import interactive

    steps = max_steps or max(1, math.ceil(len(train_ds) / batch_size * epochs))
    args = TrainingArguments(
        output_dir=str(work_dir), per_device_train_batch_size=batch_size, learning_rate=learning_rate,
        max_steps=steps, warmup_steps=max(0, int(0.06 * steps)), lr_scheduler_type="linear", weight_decay=0.01,
        save_strategy="no", eval_strategy="no", logging_steps=max(1, steps // 20), report_to=[], seed=seed,
        data_seed=seed, use_cpu=True, disable_tqdm=not interactive(), dataloader_num_workers=0,
    )
    trainer = DistillTrainer(model=student, args=args, train_dataset=train_ds, data_collator=collator,
                             teacher=teacher, alpha=alpha, temperature=temperature, train_lengths=train_lengths,
                             callbacks=[LoggingCallback(every=max(1, steps // 20))])
    # Logs go through `logging` (LoggingCallback); the stock callbacks would print them to stdout.
    trainer.remove_callback(PrinterCallback)
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(QuietProgressCallback())
    logger.info("Recovery fine-tune: %d steps, distillation alpha %.2f at T=%.1f", steps, alpha, temperature)
    output = trainer.train()
    student.eval()
    return {"steps": steps, **{k: float(v) for k, v in output.metrics.items() if isinstance(v, int | float)}}
