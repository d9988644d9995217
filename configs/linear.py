"""The linear baseline of the AGNews study (the mini SmolLM2 with no KAN layer)."""

from configs.base import get_config as _base


def get_config():
    c = _base()
    c.workdir = "runs/linear"
    return c
