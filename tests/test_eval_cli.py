"""eval.py end to end: an HF folder (fast) and a train.py workdir with a trimmed vocabulary (slow)."""

import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]

import eval as eval_cli
from kanjax.evals import loglik as evaluate
from kanjax.evals import runner as eval_models
from kanjax.evals import tasks as eval_tasks


def test_eval_cli_on_hf_folder(llama_ref, tokenizer, tokenizer_dir, shared_data, tmp_path, capsys):
    from kanjax.hf.pretrained import save_pretrained

    ours = llama_ref.ours(llama_ref.model(vocab_size=49152, seed=2, initializer_range=0.5))
    folder = save_pretrained(ours, tmp_path / "hf_tiny", tokenizer)
    text = tmp_path / "text.txt"
    text.write_text("Once upon a time there was a small model. " * 3)
    rc = eval_cli.main(["--model", str(folder), "--tasks", "arc_easy,winogrande", "--limit", "3",
                        "--tokenizer", str(tokenizer_dir), "--data_dir", str(shared_data / "mc_benchmarks"),
                        "--batch_size", "4", "--perplexity_file", str(text), "--generate", "2",
                        "--max_new_tokens", "6"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "arc_easy" in printed and "bits/byte" in printed
    results = json.loads((folder / "eval_results.json").read_text())
    expected = evaluate.evaluate_docs(ours, tokenizer, eval_tasks.load_task("arc_easy", shared_data / "mc_benchmarks",
                                                                            limit=3))
    assert results["tasks"]["arc_easy"]["n"] == 3
    assert results["tasks"]["arc_easy"]["acc"] == expected["acc"]
    assert results["perplexity"]["tokens"] > 0
    # Sample generations: greedy replies equal transformers' own greedy decoding of the same folder.
    import torch
    from transformers import AutoModelForCausalLM

    torch_model = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert [s["prompt"] for s in results["samples"]] == list(eval_models.DEFAULT_PROMPTS[:2])
    for sample in results["samples"]:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": sample["prompt"]}],
                                            add_generation_prompt=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = torch_model.generate(**ids, max_new_tokens=6, do_sample=False,
                                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        expected = tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        assert sample["completion"] == expected


def test_eval_cli_rejects_unknown_task(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        eval_cli.main(["--model", str(tmp_path), "--tasks", "arc_easyy"])


@pytest.mark.parametrize("flag", ["--data_dir", "--bbh_dir"])
def test_eval_cli_names_a_missing_data_folder_before_anything_loads(tmp_path, capsys, flag):
    # --model names nothing loadable either: the folder check must come first, with no hub attempt.
    rc = eval_cli.main(["--model", str(tmp_path / "no_model"), "--tasks", "arc_easy", flag, str(tmp_path / "nope")])
    assert rc == 2
    assert capsys.readouterr().err.strip() == f"eval.py: {flag} {tmp_path / 'nope'}: no such folder"


@pytest.mark.slow
def test_eval_on_train_workdir_with_trimmed_vocab(tmp_path, shared_data, tokenizer):
    """A 4-step causal-LM run (vocabulary trimmed to 256 from its training text) is reloaded and
    evaluated with its training data moved away: the workdir alone rebuilds the model (its
    checkpoint carries the model record, the id map and the tokenizer)."""
    import shutil

    from configs import base
    from kanjax.training.loop import run
    from tests.helpers.train import apply_overrides, tiny_overrides

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copy(shared_data / "text" / "tinyshakespeare.txt", data_dir)
    config = apply_overrides(base.get_config(), tiny_overrides(tmp_path, shared_data, **{
        "train.steps": 4, "checkpoint.every": 0, "model.task": "causal_lm", "data.task": "text",
        "data.path": str(data_dir / "tinyshakespeare.txt")}))
    summary = run(config)
    shutil.move(data_dir, tmp_path / "elsewhere")
    shutil.rmtree(tmp_path / "cache")
    out = tmp_path / "eval.json"
    assert eval_cli.main(["--model", str(tmp_path / "run"), "--tasks", "copa", "--data_dir",
                          str(shared_data / "mc_benchmarks"), "--limit", "4", "--output", str(out)]) == 0
    assert json.loads(out.read_text())["tasks"]["copa"]["n"] == 4
    model, mapped = eval_models.load_model(str(tmp_path / "run"), tokenizer)
    assert isinstance(mapped, eval_models.MappedTokenizer) and model.config.vocab_size < len(tokenizer)
    import jax
    import numpy as np

    saved = jax.tree.leaves(summary["state"]["params"])
    from flax import nnx

    loaded = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(saved, loaded))
    results = eval_models.run(model, mapped, ["copa"], data_dir=shared_data / "mc_benchmarks", limit=4,
                              batch_size=4, progress=False)
    assert results["tasks"]["copa"]["n"] == 4
