"""Fine-tuning: transfer strategies, optimizer groups, callbacks, checkpoint/resume, distributed launch."""
