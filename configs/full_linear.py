"""Full-model study, arm (a): SmolLM2-135M-Instruct unchanged (linear), fine-tuned like the KAN
arms: only the MLPs of the last 5 blocks train, on chat data."""

from configs.full_last5_mlp import get_config as _arm_d


def get_config():
    c = _arm_d()
    c.workdir = "runs/full_linear"
    c.kan.targets = ()
    return c
