"""transformers remote code for KAN-ified kanjax models.

These two files, and `kanjax/kan/basis_terms.py` as `kanjax_basis.py`, are shipped verbatim:
`kanjax.hf.save_pretrained` copies them next to the config.json of every KAN-ified export, whose
`auto_map` points at them, so that
`transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` runs the
model in plain PyTorch. They stay self-contained (torch, numpy and transformers only; the
modelling file imports the other two relatively) and never import kanjax.
"""
