"""Hugging Face in and out: SmolLM2 checkpoints (folders, hub ids, GGUF) to kanjax models and back,
KAN models included (their PyTorch modelling code ships in the exported folder).

Modules: `pretrained` (load_pretrained, save_pretrained, load_gguf), `names` (parameter-name and
layout mapping), `gguf` (reading GGUF files), `folder` (writing a folder without clobbering the last
good one), `kan_export` (the KAN config and remote code), `remote/` (the PyTorch files exported).
"""

from kanjax.hf.gguf import smollm2_gguf_path
from kanjax.hf.names import hf_name, to_hf_tensors
from kanjax.hf.pretrained import (
                                  CheckpointFileError,
                                  CheckpointMismatchError,
                                  HubUnavailableError,
                                  load_gguf,
                                  load_pretrained,
                                  save_pretrained,
                                  vocab_map,
)

__all__ = ["load_pretrained", "save_pretrained", "load_gguf", "smollm2_gguf_path", "vocab_map", "hf_name",
           "to_hf_tensors", "CheckpointFileError", "CheckpointMismatchError", "HubUnavailableError"]
