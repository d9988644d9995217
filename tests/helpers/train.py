"""Small configs and helpers shared by the training tests (plain module, imported by tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
TINY_MODEL = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152, hidden_size=64,
                  intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
                  max_position_embeddings=512, bos_token_id=1, eos_token_id=2)


def tiny_overrides(tmp_path: Path, shared_data: Path, **extra) -> dict:
    """Flag overrides for a run of a tiny scratch model on the real AGNews sample."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    model_json = tmp_path / "tiny_config.json"
    model_json.write_text(json.dumps(TINY_MODEL))
    flags = {
        "workdir": str(tmp_path / "run"), "model.source": "scratch", "model.config": str(model_json),
        "model.vocab_size": 256, "data.path": str(shared_data / "ag_news"),
        "data.tokenizer": str(shared_data / "smollm2_tokenizer"), "data.cache_dir": str(tmp_path / "cache"),
        "data.seq_len": 32, "data.batch_size": 8, "train.steps": 20, "train.warmup": 2, "train.log_every": 5,
        "eval.every": 0, "eval.limit": 64, "checkpoint.every": 10, "checkpoint.keep": 5,
    }
    flags.update({k: v for k, v in extra.items()})
    return flags


def apply_overrides(config, flags: dict):
    from kanjax.training.config import apply_overrides as apply

    return apply(config, flags)


def train_cli(config_file: str, flags: dict, env_extra=None, timeout=900, extra_args=()) -> subprocess.CompletedProcess:
    """Run train.py in a fresh process (as a user would)."""
    args = [sys.executable, str(REPO_ROOT / "train.py"), f"--config={REPO_ROOT / config_file}", *extra_args]
    args += [f"--config.{k}={v}" for k, v in flags.items()]
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(args, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def checkpoint_params(workdir: Path, step: int) -> dict:
    """Flat {path: array} of the params saved at `step`, read back with Orbax (no target needed)."""
    import orbax.checkpoint as ocp

    path = Path(workdir).absolute() / "checkpoints" / str(step) / "state"
    # As numpy on this host, whatever topology saved it (two processes, several devices).
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(path)
    meta = getattr(meta, "item_metadata", meta)
    meta = getattr(meta, "tree", meta)
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), meta)
    tree = ckptr.restore(path, args=ocp.args.PyTreeRestore(restore_args=restore_args))
    flat = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}/{k}")
        else:
            flat[prefix] = np.asarray(node)

    walk(tree["params"], "")
    return flat
