"""The distillation study: SmolLM2's last 5 MLP blocks re-learned (linear vs KAN) from recorded activations, spliced back and judged."""
