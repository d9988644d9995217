"""Full-model study, arm (b): SmolLM2-135M-Instruct with the MLPs of its last 5 blocks re-drawn at
random (linear), then retrained on chat data: the original study's linear control."""

from configs.full_last5_mlp import LAST5_MLP
from configs.full_linear import get_config as _arm_a


def get_config():
    c = _arm_a()
    c.workdir = "runs/full_linear_reinit"
    c.model.reinit = LAST5_MLP
    return c
