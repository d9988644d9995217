"""SmolLM2 / Llama in Flax NNX, and what is done to it: surgery, KAN-ification, generation.

Modules: `model` (LlamaConfig and the models), `attention` (RoPE, masks, attention, KV cache),
`surgery` (truncate layers, trim the vocabulary), `kan_spec` (KANSpec: which projections become KAN
layers), `kanify` (the only module that knows both Llama and KAN), `generate` (KV-cache decoding).
"""

from kanjax.llama.generate import generate
from kanjax.llama.kan_spec import KANSpec
from kanjax.llama.kanify import kanify, param_report
from kanjax.llama.model import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification
from kanjax.llama.surgery import trim_vocab, truncate_layers

__all__ = ["LlamaConfig", "LlamaForCausalLM", "LlamaForSequenceClassification", "truncate_layers", "trim_vocab",
           "KANSpec", "kanify", "param_report", "generate"]
