"""The experiments, one folder each: agnews (the eight claims), full_model (end-to-end fine-tuning), distill (layer-wise distillation into SmolLM2)."""
