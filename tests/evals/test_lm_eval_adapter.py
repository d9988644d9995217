"""kanjax.lm_eval_adapter: the LM methods directly, and one lm-eval task from a local YAML + jsonl."""

import json
import math

import numpy as np
import pytest

from kanjax.evals import loglik as evaluate
from kanjax.evals import tasks as eval_tasks
from kanjax.evals.lm_eval_adapter import KanjaxLMCore, cut_at_stops, left_pad


@pytest.fixture(scope="module")
def tiny(llama_ref):
    hf = llama_ref.model(vocab_size=49152, seed=1, initializer_range=0.5)
    return llama_ref.ours(hf)


def test_cut_at_stops_and_left_pad():
    assert cut_at_stops("abc\n\nQ: x", ["\n\n", "Q:"]) == "abc"
    assert cut_at_stops("abc", ["", "z"]) == "abc"
    ids, mask = left_pad([[5, 6], [7]], 0)
    assert ids.tolist() == [[5, 6], [0, 7]] and mask.tolist() == [[1, 1], [0, 1]]


def test_core_methods(tiny, tokenizer):
    lm = KanjaxLMCore(tiny, tokenizer, batch_size=2, max_length=16)
    reqs = [("The cat", " sat"), ("", "Hello")]
    for (a, ga), (b, gb) in zip(lm.loglikelihood(reqs), evaluate.loglikelihoods(tiny, tokenizer, reqs, max_len=16)):
        assert a == pytest.approx(b, abs=1e-4) and ga == gb
    text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen " * 2
    rolling = lm.loglikelihood_rolling([(text,), ("short",)])
    ppl = evaluate.perplexity(tiny, tokenizer, text, max_len=16)
    assert rolling[0] == pytest.approx(-ppl["nll_sum"], abs=1e-3) and len(rolling) == 2
    outs = lm.generate_until([("Once upon a time", {"until": ["\n"], "max_gen_toks": 4}),
                              ("The", {"until": [], "max_gen_toks": 3})])
    assert len(outs) == 2 and all(isinstance(o, str) and "\n" not in o for o in outs[:1])


def test_lm_eval_task_from_local_yaml(tiny, tokenizer, shared_data, tmp_path, monkeypatch):
    """lm-eval runs a multiple_choice task over a local jsonl (no hub) and agrees with kanjax.evaluate."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from kanjax.evals.lm_eval_adapter import REGISTERED_NAME, lm_class

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = (shared_data / "mc_benchmarks" / "copa.jsonl").read_text().splitlines()[:6]
    data = tmp_path / "copa6.jsonl"
    data.write_text("\n".join(rows) + "\n")
    (tmp_path / "kanjax_copa_local.yaml").write_text("\n".join([
        "task: kanjax_copa_local", "dataset_path: json", "dataset_kwargs:", "  data_files:",
        f"    test: {json.dumps(str(data))}", "test_split: test", "output_type: multiple_choice",
        'doc_to_text: "{{query}}"', 'doc_to_choice: "{{choices}}"', "doc_to_target: gold",
        'target_delimiter: " "', "metric_list:", "  - metric: acc", "    aggregation: mean",
        "    higher_is_better: true", "  - metric: acc_norm", "    aggregation: mean", "    higher_is_better: true", ""]))
    cls = lm_class()
    from lm_eval.api.registry import get_model

    assert get_model(REGISTERED_NAME) is cls
    out = lm_eval.simple_evaluate(model=cls(model=tiny, tokenizer=tokenizer, batch_size=4),
                                  tasks=["kanjax_copa_local"], task_manager=TaskManager(include_path=str(tmp_path)))
    got = out["results"]["kanjax_copa_local"]
    ours = evaluate.evaluate_docs(tiny, tokenizer, eval_tasks.load_task("copa", path=data))
    assert got["acc,none"] == pytest.approx(ours["acc"]) and got["acc_norm,none"] == pytest.approx(ours["acc_norm"])
    harness_lls = [r[0][0] for s in out["samples"]["kanjax_copa_local"] for r in s["resps"]]
    our_lls = [ll for ll, _ in evaluate.loglikelihoods(tiny, tokenizer, evaluate.mc_requests(
        eval_tasks.load_task("copa", path=data)))]
    assert np.allclose(sorted(harness_lls), sorted(our_lls), atol=1e-4) and all(map(math.isfinite, our_lls))


def test_create_from_arg_string_loads_a_folder(tiny, tokenizer, tokenizer_dir, tmp_path):
    pytest.importorskip("lm_eval")
    from kanjax.evals.lm_eval_adapter import lm_class
    from kanjax.hf.pretrained import save_pretrained

    folder = save_pretrained(tiny, tmp_path / "hf_tiny", tokenizer)
    lm = lm_class().create_from_arg_string(f"model={folder},tokenizer={tokenizer_dir},batch_size=4")
    reqs = [("The cat", " sat on the mat")]
    (a, _), = lm.loglikelihood(reqs)
    (b, _), = evaluate.loglikelihoods(tiny, tokenizer, reqs)
    assert a == pytest.approx(b, abs=1e-4)
