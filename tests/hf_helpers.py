"""Helpers shared by the Hugging Face interop tests (plain module, imported by tests)."""

import logging

import numpy as np
import torch


def default_positions(mask: np.ndarray) -> np.ndarray:
    """kanjax's positions for a padded batch: cumsum(mask) - 1, clipped at 0."""
    return np.maximum(np.cumsum(mask, axis=1) - 1, 0)


def torch_logits(model, ids, mask) -> np.ndarray:
    """float32 logits of a transformers model, with the same positions kanjax uses."""
    with torch.inference_mode():
        out = model(input_ids=torch.as_tensor(ids, dtype=torch.long),
                    attention_mask=torch.as_tensor(mask, dtype=torch.long),
                    position_ids=torch.as_tensor(default_positions(mask), dtype=torch.long))
    return out.logits.float().numpy()


class LogCapture(logging.Handler):
    """transformers' loggers do not propagate to root (so caplog misses them): hook them directly."""

    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records = []

    def emit(self, record):
        self.records.append(record.getMessage())
