"""The full-model study: SmolLM2-135M-Instruct with KAN MLPs in its last 5 blocks, fine-tuned end to end."""
