"""Dataset sources, validation, splits and preparation."""
