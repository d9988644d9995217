"""Helpers shared by the Hugging Face interop tests (plain module, imported by tests)."""

import logging

import numpy as np
import torch


def left_padded_batch(vocab: int, b: int = 3, t: int = 11, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Token ids in [3, vocab) and mask, both (b, t) int32; row i is left-padded by 2i (pad id 0), row 0 unpadded."""
    rs = np.random.RandomState(seed)
    ids = rs.randint(3, vocab, (b, t)).astype(np.int32)
    mask = np.ones((b, t), np.int32)
    for i in range(1, b):
        mask[i, : 2 * i] = 0
        ids[i, : 2 * i] = 0
    return ids, mask


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
