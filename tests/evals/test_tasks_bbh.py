"""BIG-Bench Hard in the eval registry and eval.py, and eval.py --task_file, on real fixture rows.

Prompt building and answer extraction are pure functions checked against hand-written strings; the
generation path runs a tiny random Llama (SmolLM2's vocabulary) through eval.py and is compared with
transformers' own greedy decoding of the same checkpoint, row by row and unpadded.
"""

import json
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

import eval as eval_cli
from kanjax.evals import bbh
from kanjax.evals import loglik as evaluate
from kanjax.evals import tasks as eval_tasks

BOOLEAN_PREFIX = ("Evaluate the result of a random Boolean expression.\n\n"
                  "Q: not ( ( not not True ) ) is\nA: False\n\n"
                  "Q: True and False and not True and True is\nA: False\n\n"
                  "Q: not not ( not ( False ) ) is\nA: True\n\n")


def test_answer_only_prompt_is_the_cot_prompt_without_reasoning(shared_data):
    docs = eval_tasks.load_task("bbh_boolean_expressions", shared_data / "bbh", limit=2)
    rows = json.loads((shared_data / "bbh" / "boolean_expressions.json").read_text())["examples"][:2]
    assert [d["prompt"] for d in docs] == [BOOLEAN_PREFIX + f"Q: {r['input']}\nA:" for r in rows]
    assert [d["target"] for d in docs] == [r["target"] for r in rows]
    cot = eval_tasks.load_task("bbh_boolean_expressions", shared_data / "bbh", limit=1, cot=True)[0]["prompt"]
    assert cot.startswith("Evaluate the result of a random Boolean expression.\n\nQ: not ( ( not not True ) ) is\n"
                          "A: Let's think step by step.\nRemember")
    assert cot.endswith(f"So the answer is True.\n\nQ: {rows[0]['input']}\nA: Let's think step by step.\n")
    for task in bbh.TASKS:  # every shipped prompt parses into 3 examples with a final answer
        description, shots = bbh.parse_cot_prompt((shared_data / "bbh" / "cot-prompts" / f"{task}.txt").read_text())
        assert description and len(shots) == 3 and all(a and not a.endswith(".") for _, _, a in shots), task
        assert "Let's think" not in bbh.fewshot_prefix((shared_data / "bbh" / "cot-prompts" / f"{task}.txt")
                                                      .read_text())


@pytest.mark.parametrize("generation, cot, answer", [
    (" (A)\n\nQ: next question", False, "(A)"),
    (" True.", False, "True"),
    ("  valid  \nmore", False, "valid"),
    ("\n(B)", False, ""),  # the first line is empty: no answer
    (" ] ) )", False, "] ) )"),
    (" Let's see. (A) is wrong. So the answer is (B).\n\nQ: (C)", True, "(B)"),
    (" So the answer is 24.\nSo the answer is 25.", True, "24"),
    (" I do not know.\n\nQ: So the answer is (A).", True, ""),  # the answer after the stop does not count
])
def test_extract_answer(generation, cot, answer):
    assert bbh.extract_answer(generation, cot) == answer


def test_exact_match_is_case_sensitive():
    assert bbh.is_correct("True", "True") and bbh.is_correct("(A)", " (A) ")
    assert not bbh.is_correct("true", "True") and not bbh.is_correct("(A", "(A)")


def test_bbh_registry_groups_and_sources(shared_data, tmp_path, monkeypatch):
    names = eval_tasks.expand_tasks(["arc_easy", "bbh", "bbh_navigate"])
    assert names[0] == "arc_easy" and len(names) == 28 and names[1:] == list(bbh.task_names())
    with pytest.raises(ValueError, match="bbh_<task>"):
        eval_tasks.expand_tasks(["bbh_nope"])
    # The same rows from the shared data folder, its bbh/ folder, or one explicit file.
    a = eval_tasks.load_task("bbh_navigate", shared_data, limit=3)
    b = eval_tasks.load_task("bbh_navigate", shared_data / "bbh", limit=3)
    c = eval_tasks.load_task("bbh_navigate", path=shared_data / "bbh" / "navigate.json", limit=3)
    assert a == b == c and len(a) == 3 and a[0]["target"] in ("Yes", "No")
    # A file without its prompt beside it, a malformed file, and no local files offline.
    lone = tmp_path / "navigate.json"
    shutil.copy(shared_data / "bbh" / "navigate.json", lone)
    with pytest.raises(FileNotFoundError, match="cot-prompts"):
        eval_tasks.load_task("bbh_navigate", path=lone)
    (tmp_path / "cot-prompts").mkdir()
    shutil.copy(shared_data / "bbh" / "cot-prompts" / "navigate.txt", tmp_path / "cot-prompts")
    lone.write_text('{"rows": []}')
    with pytest.raises(ValueError, match="not a BBH task file"):
        eval_tasks.load_task("bbh_navigate", path=lone)
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(FileNotFoundError, match="--bbh_dir"):
        eval_tasks.load_task("bbh_navigate", tmp_path / "empty")


@pytest.fixture(scope="module")
def tiny_folder(llama_ref, tokenizer, tmp_path_factory):
    """A tiny random Llama with SmolLM2's vocabulary, saved as an HF folder (with the tokenizer)."""
    from kanjax.hf.pretrained import save_pretrained

    ours = llama_ref.ours(llama_ref.model(vocab_size=49152, seed=3, initializer_range=0.5,
                                          max_position_embeddings=1024))
    return save_pretrained(ours, tmp_path_factory.mktemp("tiny") / "hf", tokenizer), ours


def _torch_answers(folder, tokenizer, prompts, max_new_tokens):
    """Independent reference: transformers' greedy decoding, one unpadded prompt at a time."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    texts = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 do_sample=False, eos_token_id=tokenizer.eos_token_id,
                                 pad_token_id=tokenizer.eos_token_id)
        texts.append(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return texts


def test_bbh_through_eval_cli_matches_torch_greedy(tiny_folder, tokenizer, tokenizer_dir, shared_data, tmp_path):
    folder, _ = tiny_folder
    bbh_dir = tmp_path / "bbh"
    (bbh_dir / "cot-prompts").mkdir(parents=True)
    tasks = ("boolean_expressions", "sports_understanding")
    answers = {}
    for task in tasks:  # three real rows per task; the first gets the tiny model's own answer as target
        shutil.copy(shared_data / "bbh" / "cot-prompts" / f"{task}.txt", bbh_dir / "cot-prompts")
        rows = json.loads((shared_data / "bbh" / f"{task}.json").read_text())["examples"][:3]
        prompts = [bbh.build_prompt(bbh.fewshot_prefix((bbh_dir / "cot-prompts" / f"{task}.txt").read_text()),
                                    r["input"]) for r in rows]
        answers[task] = [bbh.extract_answer(t) for t in _torch_answers(folder, tokenizer, prompts, 5)]
        rows[0]["target"] = answers[task][0]
        (bbh_dir / f"{task}.json").write_text(json.dumps({"examples": rows}))
    out = tmp_path / "results.json"
    rc = eval_cli.main(["--model", str(folder), "--tasks", ",".join("bbh_" + t for t in tasks), "--limit", "3",
                        "--tokenizer", str(tokenizer_dir), "--bbh_dir", str(bbh_dir), "--gen_batch_size", "2",
                        "--bbh_max_new_tokens", "5", "--output", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())
    for task in tasks:
        m = results["tasks"]["bbh_" + task]
        assert [p["answer"] for p in m["predictions"]] == answers[task]
        rows = json.loads((bbh_dir / f"{task}.json").read_text())["examples"]
        hits = [a == r["target"] for a, r in zip(answers[task], rows)]
        assert m["correct"] == "".join(str(int(h)) for h in hits) and m["correct"][0] == "1"
        assert m["exact_match"] == pytest.approx(sum(hits) / 3) and m["n"] == 3
    group = results["groups"]["bbh"]
    assert group["tasks"] == 2 and group["exact_match"] == pytest.approx(
        (results["tasks"]["bbh_" + tasks[0]]["exact_match"] + results["tasks"]["bbh_" + tasks[1]]["exact_match"]) / 2)


def test_task_file_reads_original_format_files(tiny_folder, tokenizer, tokenizer_dir, shared_data, tmp_path):
    folder, ours = tiny_folder
    original = shared_data / "mc_benchmarks" / "original_format"
    hellaswag, mmlu = original / "hellaswag_val_sample.jsonl", original / "mmlu_high_school_biology_test_sample.csv"
    out = tmp_path / "results.json"
    rc = eval_cli.main(["--model", str(folder), "--tasks", f"mmlu_cloze={mmlu}", "--task_file",
                        f"hellaswag={hellaswag}", "--tokenizer", str(tokenizer_dir), "--batch_size", "4",
                        "--output", str(out)])
    assert rc == 0
    results = json.loads(out.read_text())["tasks"]
    assert set(results) == {"mmlu_cloze", "hellaswag"}
    for name, path in (("hellaswag", hellaswag), ("mmlu_cloze", mmlu)):
        expected = evaluate.evaluate_docs(ours, tokenizer, eval_tasks.load_task(name, path=path))
        assert results[name]["n"] == expected["n"] > 0 and results[name]["acc"] == expected["acc"]
    with pytest.raises(ValueError, match="NAME=PATH"):
        eval_cli.main(["--model", str(folder), "--task_file", "piqa"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        eval_cli.main(["--model", str(folder), "--task_file", f"piqa={tmp_path / 'missing.jsonl'}"])


def test_common_prefix():
    assert bbh.common_prefix([[1, 2, 3, 4], [1, 2, 3, 5], [1, 2, 9]]) == 2
    assert bbh.common_prefix([[1, 2, 3], [1, 2, 3]]) == 2  # each row keeps a token of its own
    assert bbh.common_prefix([[5, 1], [6, 1]]) == 0


def test_shared_prefix_generation_equals_whole_prompts(tiny_folder, tokenizer, shared_data):
    """The few-shot prefix prefilled once (batch 1) and shared gives the same greedy tokens as whole prompts."""
    _, model = tiny_folder
    docs = eval_tasks.load_task("bbh_navigate", shared_data / "bbh", limit=5)
    prompts = [d["prompt"] for d in docs]
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    assert bbh.common_prefix(rows) >= 2 * bbh.PREFIX_BUCKET  # the path under test really shares a prefix
    shared = bbh.generate_texts(model, tokenizer, prompts, max_new_tokens=6, batch_size=2)
    whole = bbh.generate_texts(model, tokenizer, prompts, max_new_tokens=6, batch_size=2, shared_prefix=False)
    assert shared == whole and len(set(shared)) > 1


def test_stop_token_ids_are_newline_tokens_and_eos_once_per_tokenizer(tokenizer):
    ids = bbh.stop_token_ids(tokenizer)
    texts = {i: tokenizer.decode([i]) for i in ids}
    assert tokenizer.eos_token_id in ids and tokenizer.encode("\n")[-1] in ids
    assert all("\n" in t for i, t in texts.items() if i != tokenizer.eos_token_id)
    cot = bbh.stop_token_ids(tokenizer, cot=True)
    assert set(cot) < set(ids) and all("\n\n" in texts[i] for i in cot if i != tokenizer.eos_token_id)
    ids.clear()  # the caller's copy: the kept list is not touched
    assert bbh.stop_token_ids(tokenizer) == sorted(texts)
