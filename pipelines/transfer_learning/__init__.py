"""The transfer-learning pipeline: data prep → fine-tune → evaluate/forgetting/export → gated deploy."""
