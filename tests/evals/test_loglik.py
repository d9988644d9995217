"""kanjax.evaluate / kanjax.eval_tasks against independent PyTorch (transformers) computations."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from kanjax.evals import loglik as evaluate
from kanjax.evals import tasks as eval_tasks

TOL = 1e-3

REQUESTS = [
    ("Question: What color is the sky?\nAnswer:", " blue"),
    ("Question: What color is the sky?\nAnswer:", " green with purple spots"),
    ("The cat sat on the ", "mat."),  # trailing space moves into the continuation
    ("", "Hello world"),  # empty context: BOS/EOS prefix
    ("A much longer context that goes on and on, " * 4, " and ends here."),
]

# Hand-made 3-question set (the answers the model prefers are read off the torch numbers).
DOCS = [
    {"contexts": ["Question: What color is the sky?\nAnswer:"] * 3,
     "continuations": [" blue", " green", " a very long answer about colours"],
     "choices": ["blue", "green", "a very long answer about colours"], "gold": 0},
    {"contexts": ["The capital of France is"] * 2, "continuations": [" Paris", " the city of Rome"],
     "choices": ["Paris", "the city of Rome"], "gold": 1},
    {"contexts": ["Sarah helped Maria because Sarah", "Sarah helped Maria because Maria"],
     "continuations": [" was kind."] * 2, "choices": ["was kind."] * 2, "gold": 0},
]


def torch_loglikelihood(hf, tokenizer, context, continuation, max_len=None):
    """Independent reference: one unpadded forward pass of transformers per request."""
    n_sp = len(context) - len(context.rstrip())
    if n_sp:
        context, continuation = context[:-n_sp], context[-n_sp:] + continuation
    enc = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    if context:
        whole, n_ctx = enc(context + continuation), len(enc(context))
        ctx, cont = whole[:n_ctx], whole[n_ctx:]
    else:
        ctx, cont = [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id], \
            enc(continuation)
    tokens = (ctx + cont)
    if max_len is not None:
        tokens = tokens[-(max_len + 1):]
    with torch.no_grad():
        logits = hf(torch.tensor([tokens[:-1]])).logits[0].double()
    logp = torch.log_softmax(logits, -1)[-len(cont):]
    tgt = torch.tensor(cont)
    ll = float(logp[torch.arange(len(cont)), tgt].sum())
    greedy = bool((logits[-len(cont):].argmax(-1) == tgt).all())
    return ll, greedy


@pytest.fixture(scope="module")
def tiny_pair(llama_ref):
    """A tiny random transformers Llama with the full SmolLM2 vocabulary, and our copy of it."""
    hf = llama_ref.model(vocab_size=49152, seed=1, initializer_range=0.5)
    return hf, llama_ref.ours(hf)


def test_loglikelihoods_match_torch_tiny(tiny_pair, tokenizer):
    hf, ours = tiny_pair
    got = evaluate.loglikelihoods(ours, tokenizer, REQUESTS, batch_size=2)
    for (ctx, cont), (ll, greedy) in zip(REQUESTS, got):
        ref_ll, ref_greedy = torch_loglikelihood(hf, tokenizer, ctx, cont)
        assert abs(ll - ref_ll) < TOL, (ctx, cont, ll, ref_ll)
        assert greedy == ref_greedy


def test_bucket_padding_gives_identical_scores(tiny_pair, tokenizer):
    _, ours = tiny_pair
    bucketed = evaluate.loglikelihoods(ours, tokenizer, REQUESTS, batch_size=4, buckets=(8, 64))
    unpadded = [evaluate.loglikelihoods(ours, tokenizer, [r], batch_size=1, buckets=None)[0] for r in REQUESTS]
    for (a, ga), (b, gb) in zip(bucketed, unpadded):
        assert abs(a - b) < 1e-4 and ga == gb


def test_packed_scoring_equals_one_row_per_request(tiny_pair):
    """Shared-prefix packing (several contexts per row, continuations after their context, a group
    too long for one row split, left truncation) gives each request's unpacked log-likelihood."""
    _, ours = tiny_pair
    rng = np.random.default_rng(0)
    ids = lambda n: rng.integers(5, 49152, n).tolist()  # noqa: E731
    pairs = []
    for n_ctx, n_choices in [(10, 14), (3, 4), (20, 2), (1, 1), (30, 3), (60, 2)]:  # 60: truncated at max_len
        ctx = ids(n_ctx)
        pairs += [(ctx, ids(int(rng.integers(1, 9)))) for _ in range(n_choices)]
    pairs.append((pairs[0][0][:5], ids(4)))  # a context that is a prefix of another: its own group
    from kanjax.evals import packing

    cut = [packing.cut_request(c, k, 48) for c, k in pairs]
    assert len(packing.groups(cut, 48)) > len({r.prefix for r in cut})  # the 14-choice group is split
    stats = {}
    packed = evaluate.score_packed(ours, pairs, max_len=48, buckets=(16, 32, 64), tokens_per_call=96, stats=stats)
    single = evaluate.score_token_rows(ours, pairs, batch_size=1, buckets=None, max_len=48)
    assert stats["calls"] > 1 and 0 <= stats["padding_fraction"] < 1
    assert stats["tokens"] < sum(len(c[-(48 + 1 - len(k)):]) + len(k) - 1 for c, k in pairs)  # contexts shared
    for (a, ga), (b, gb) in zip(packed, single):
        assert abs(a - b) < 1e-4 and ga == gb


def test_packing_layout_is_what_the_mask_assumes():
    from kanjax.evals import packing

    reqs = [packing.cut_request([7, 8, 9], [1, 2], 16), packing.cut_request([7, 8, 9], [3], 16),
            packing.cut_request([5], [4, 4, 4], 16)]
    groups = packing.groups(reqs, 16)
    rows = [[groups[g] for g in row] for row in packing.assign_rows([packing.group_length(reqs, g) for g in groups], 16)]
    assert len(rows) == 1
    b = packing.pack_rows(reqs, rows[0:1], 10, 8, 1)
    np.testing.assert_array_equal(b.tokens[0], [7, 8, 9, 1, 5, 4, 4, 0, 0, 0])
    np.testing.assert_array_equal(b.positions[0], [0, 1, 2, 3, 0, 1, 2, 0, 0, 0])
    np.testing.assert_array_equal(b.segment[0], [1, 1, 1, 1, 2, 2, 2, 0, 0, 0])
    np.testing.assert_array_equal(b.branch[0], [0, 0, 0, 1, 0, 1, 1, 0, 0, 0])
    # request 1's only target (3) is predicted by the context's last token, as request 0's first.
    np.testing.assert_array_equal(b.owner[0], [0, 0, 1, 2, 2, 2, -1, -1])
    np.testing.assert_array_equal(b.target_index[0][:6], [2, 3, 2, 4, 5, 6])
    np.testing.assert_array_equal(b.target_token[0][:6], [1, 2, 3, 4, 4, 4])


def test_left_truncation_matches_torch(tiny_pair, tokenizer):
    hf, ours = tiny_pair
    ctx, cont = REQUESTS[4]
    (ll, _), = evaluate.loglikelihoods(ours, tokenizer, [(ctx, cont)], max_len=12)
    assert abs(ll - torch_loglikelihood(hf, tokenizer, ctx, cont, max_len=12)[0]) < TOL
    with pytest.raises(ValueError, match="exceeds the model limit"):
        evaluate.loglikelihoods(ours, tokenizer, [("a", " b" * 40)], max_len=12)


def test_acc_and_acc_norm_from_independent_numbers(tiny_pair, tokenizer):
    hf, ours = tiny_pair
    result = evaluate.evaluate_docs(ours, tokenizer, DOCS, batch_size=4)
    acc = acc_norm = 0
    for d in DOCS:
        ref = np.array([torch_loglikelihood(hf, tokenizer, c, k)[0] for c, k in zip(d["contexts"], d["continuations"])])
        acc += int(np.argmax(ref)) == d["gold"]
        acc_norm += int(np.argmax(ref / np.array([len(c) for c in d["choices"]]))) == d["gold"]
    assert result["n"] == 3
    assert result["acc"] == pytest.approx(acc / 3) and result["acc_norm"] == pytest.approx(acc_norm / 3)


def test_mc_predictions_normalise_by_characters():
    # raw: choice 0 wins; per character: choice 1 (-6/12 = -0.5 > -2/2 = -1).
    assert evaluate.mc_predictions([-2.0, -6.0], ["ab", "abcdefghijkl"]) == (0, 1)


def test_perplexity_windows_cover_every_token_once(tiny_pair, tokenizer):
    _, ours = tiny_pair
    tokens = list(range(10, 47))
    pairs = evaluate.rolling_pairs(tokens, 1, max_len=8, stride=5)
    assert [t for _, c in pairs for t in c] == tokens
    assert all(len(c) + len(k) - 1 <= 8 for c, k in pairs)
    text = "The quick brown fox jumps over the lazy dog. " * 6
    windowed = evaluate.perplexity(ours, tokenizer, text, max_len=16, stride=8)
    whole = evaluate.perplexity(ours, tokenizer, text)
    assert windowed["tokens"] == whole["tokens"]
    assert whole["bits_per_byte"] == pytest.approx(whole["nll_sum"] / (np.log(2) * len(text.encode())))
    assert np.isfinite(windowed["token_perplexity"])


def test_perplexity_of_a_long_window_matches_torch(tiny_pair, tokenizer):
    # Over HEAD_CHUNK positions, every one scored: the head runs chunk by chunk (perplexity of long texts).
    hf, ours = tiny_pair
    text = " ".join(f"word{i} and {i * 7 % 13} more;" for i in range(60))
    tokens = [evaluate.prefix_token_id(tokenizer)] + evaluate.encode(tokenizer, text)
    assert len(tokens) - 1 > evaluate.HEAD_CHUNK
    got = evaluate.perplexity(ours, tokenizer, text, max_len=len(tokens))
    with torch.no_grad():
        logp = torch.log_softmax(hf(torch.tensor([tokens[:-1]])).logits[0].double(), -1)
    want = -float(logp[torch.arange(len(tokens) - 1), torch.tensor(tokens[1:])].sum())
    assert got["tokens"] == len(tokens) - 1
    assert got["nll_sum"] == pytest.approx(want, rel=1e-5)
    # And the (b, t, v) logits never exist at once: XLA's plan for 2 windows of 2,048 tokens stays
    # under the size of those logits alone (805 MB).
    graphdef, state = nnx.split(ours)
    rows = jax.ShapeDtypeStruct((2, 2048), jnp.int32)
    plan = evaluate._score_batch.lower(graphdef, state, rows, rows, rows, jax.ShapeDtypeStruct((2, 2048), bool)
                                       ).compile().memory_analysis()
    assert plan.temp_size_in_bytes < 2 * 2048 * 49152 * 4 / 3


def test_long_rows_are_scored_fewer_per_call_with_the_same_scores(tiny_pair, monkeypatch):
    _, ours = tiny_pair
    rng = np.random.default_rng(0)
    pairs = [(list(rng.integers(5, 900, n)), list(rng.integers(5, 900, 3))) for n in (100, 90, 40, 30, 20)]
    want = evaluate.score_token_rows(ours, pairs, batch_size=4)
    shapes, real = [], evaluate._score_batch

    def recording(graphdef, state, inputs, *rest, **kw):
        shapes.append(inputs.shape)
        return real(graphdef, state, inputs, *rest, **kw)

    monkeypatch.setattr(evaluate, "_score_batch", recording)
    got = evaluate.score_token_rows(ours, pairs, batch_size=4, tokens_per_call=256)
    # 128-token rows (the bucket of 100 and 90): two per call; 64-token rows: all three in one call.
    assert shapes == [(2, 128), (4, 64)]
    for (a, ga), (b, gb) in zip(got, want, strict=True):
        assert a == pytest.approx(b, rel=1e-6) and ga == gb


def test_model_without_lm_head_is_refused(llama_ref, tokenizer):
    clf = llama_ref.ours(llama_ref.model("LlamaForSequenceClassification", num_labels=2))
    with pytest.raises(TypeError, match="no language-model head"):
        evaluate.loglikelihoods(clf, tokenizer, [("a", " b")])


# ----------------------------------------------------------------------------- loaders


def test_loaders_on_original_formats(shared_data):
    base = shared_data / "mc_benchmarks"
    arc = eval_tasks.load_task("arc_easy_original", base)
    assert arc[0]["contexts"][0].startswith("Question: An astronomer") and arc[0]["contexts"][0].endswith("\nAnswer:")
    assert arc[0]["continuations"][2] == " Planetary days will become shorter." and arc[0]["gold"] == 2
    obqa = eval_tasks.load_task("openbook_qa_original", base)
    assert obqa[1]["contexts"][0] == "If a person walks in the opposite direction of a compass arrow they are walking"
    assert obqa[1]["gold"] == 3
    wino = eval_tasks.load_task("winogrande_original", base)
    assert wino[0]["contexts"][1].endswith("because Dennis") and wino[0]["continuations"] == [" despised eating intestine."] * 2
    assert wino[0]["gold"] == 1 and wino[1]["gold"] == 0
    hs = eval_tasks.load_task("hellaswag_original", base)
    assert hs[0]["contexts"][0] == "Roof shingle removal: A man is sitting on a roof. He"
    assert hs[0]["gold"] == 3 and len(hs[0]["choices"]) == 4
    mmlu = eval_tasks.load_task("mmlu_original", base)
    assert mmlu[2]["continuations"][2] == " produce ATP" and mmlu[2]["gold"] == 2 and len(mmlu) == 5


def test_mosaic_loaders(shared_data):
    base = shared_data / "mc_benchmarks"
    arc = eval_tasks.load_task("arc_easy", base)
    assert len(arc) == 2376 and arc[0]["contexts"][0].endswith("food webs?\nAnswer:")
    assert arc[0]["continuations"][0] == " Sunlight is the source of energy for nearly all ecosystems."
    wino = eval_tasks.load_task("winogrande", base, limit=3)
    assert len(wino) == 3 and wino[0]["contexts"][1].endswith("so Maria") and wino[0]["gold"] == 1
    copa = eval_tasks.load_task("copa", base, limit=1)
    assert copa[0]["contexts"][0] == "The man turned on the faucet, therefore"


def test_hellaswag_preprocess():
    text = "Doing it [title] Step one. [step] Then  more [header] text "
    assert eval_tasks.hellaswag_preprocess(text) == "Doing it. Step one. Then more text"


def test_small_converters():
    piqa = eval_tasks.piqa({"goal": "Open a jar", "sol1": "twist", "sol2": "bite", "label": 0})
    assert piqa["contexts"][0] == "Question: Open a jar\nAnswer:" and piqa["continuations"] == [" twist", " bite"]
    copa = eval_tasks.copa({"premise": "My body cast a shadow.", "choice1": "The sun was rising.",
                            "choice2": "The grass was cut.", "question": "cause", "label": 0})
    assert copa["contexts"][0] == "My body cast a shadow because" and copa["continuations"][0] == " the sun was rising."
    hub_arc = eval_tasks.arc({"question": "Q?", "choices": {"text": ["x", "y"], "label": ["A", "B"]}, "answerKey": "B"})
    assert hub_arc["gold"] == 1 and hub_arc["contexts"][0] == "Question: Q?\nAnswer:"


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        eval_tasks.load_task("nope")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"query": "q", "choices": ["a"], "gold": 0}) + "\n" + json.dumps({"query": "q"}) + "\n")
    with pytest.raises(eval_tasks.MalformedRowError, match=r"bad.jsonl:2: missing key 'choices'"):
        eval_tasks.load_task("copa", path=bad)
    bad.write_text("{not json\n")
    with pytest.raises(eval_tasks.MalformedRowError, match=r"bad.jsonl:1: not valid JSON"):
        eval_tasks.load_task("copa", path=bad)
    bad.write_text(json.dumps({"query": "q", "choices": ["a"], "gold": 3}) + "\n")
    with pytest.raises(eval_tasks.MalformedRowError, match=r"bad.jsonl:1: .*gold index 3"):
        eval_tasks.load_task("copa", path=bad)
    with pytest.raises(FileNotFoundError):
        eval_tasks.load_task("copa", path=tmp_path / "missing.jsonl")


# ----------------------------------------------------------------------------- the real model


@pytest.mark.slow
def test_loglikelihoods_match_torch_real_smollm2(smollm2_torch_model, smollm2_gguf, tokenizer):
    from kanjax.hf.pretrained import load_gguf

    ours = load_gguf(smollm2_gguf)
    got = evaluate.loglikelihoods(ours, tokenizer, REQUESTS, batch_size=5)
    for (ctx, cont), (ll, greedy) in zip(REQUESTS, got):
        ref_ll, ref_greedy = torch_loglikelihood(smollm2_torch_model, tokenizer, ctx, cont)
        assert abs(ll - ref_ll) < TOL, (ctx, cont, ll, ref_ll)
        assert greedy == ref_greedy
