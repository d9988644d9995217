"""Multiple-choice benchmark loaders and the task registry used by ``eval.py``.

Every loader returns docs {"contexts": [n], "continuations": [n], "choices": [n], "gold": int}:
choice i is scored as log p(continuations[i] | contexts[i]); "choices" holds the bare answer
texts whose character lengths normalise acc_norm (lm-eval's convention). Prompts are the zero-shot
cloze forms of lm-evaluation-harness (ARC, PIQA, MMLU cloze: "Question: ...\\nAnswer:" + " answer").

Formats: MosaicML ICL jsonl ({query, choices, gold}; WinoGrande {context_options, continuation,
gold}), and the original releases / hub schemas of ARC, OpenBookQA, WinoGrande, HellaSwag, MMLU
(headerless csv), PIQA, COPA (SuperGLUE) and CommonsenseQA. A local file overrides the hub id.

The registry also holds the 27 BIG-Bench Hard tasks `bbh_<name>` (kind "bbh": generation scored by
exact match, docs {"prompt", "target", "input"}; see `kanjax.evals.bbh`); the group name `bbh` expands to
all of them (`expand_tasks`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from kanjax.errors import InputError
from kanjax.evals import bbh


class MalformedRowError(InputError):
    """A data row lacks a key or has a bad value; the message names file, line and key."""


def _doc(contexts, continuations, choices, gold) -> dict:
    gold = int(gold)
    if not 0 <= gold < len(contexts):
        raise ValueError(f"gold index {gold} outside the {len(contexts)} choices")
    return {"contexts": list(contexts), "continuations": list(continuations), "choices": list(choices),
            "gold": gold}


def _cloze(context: str, choices: list[str], gold, delimiter: str = " ") -> dict:
    return _doc([context] * len(choices), [delimiter + c for c in choices], choices, gold)


# ----------------------------------------------------------------------------- row converters


def mosaic_mc(row: dict, delimiter: str = " ") -> dict:
    """MosaicML {query, choices, gold}; context = query + delimiter."""
    return _cloze(row["query"] + delimiter.rstrip(" "), list(row["choices"]), row["gold"],
                  " " if delimiter.endswith(" ") else "")


def mosaic_schema(row: dict, delimiter: str = " ") -> dict:
    """MosaicML WinoGrande {context_options, continuation, gold}: partial scoring of the shared continuation."""
    options = list(row["context_options"])
    cont = row["continuation"]
    return _doc(options, [delimiter + cont] * len(options), [cont] * len(options), row["gold"])


def _labelled_choices(row: dict) -> tuple[list[str], list[str]]:
    """ARC / OpenBookQA / CommonsenseQA choices: original [{text,label}] or hub {text:[], label:[]}."""
    q = row["question"]
    choices = q["choices"] if isinstance(q, dict) else row["choices"]
    if isinstance(choices, dict):
        return list(choices["text"]), list(choices["label"])
    return [c["text"] for c in choices], [c["label"] for c in choices]


def _stem(row: dict) -> str:
    q = row["question"] if "question" in row else row["question_stem"]
    return q["stem"] if isinstance(q, dict) else (row.get("question_stem") or q)


def arc(row: dict) -> dict:
    """ARC (original jsonl or hub): "Question: {stem}\\nAnswer:" + " {choice}"."""
    texts, labels = _labelled_choices(row)
    return _cloze(f"Question: {_stem(row)}\nAnswer:", texts, labels.index(row["answerKey"]))


def openbookqa(row: dict) -> dict:
    """OpenBookQA: the stem itself is the context (lm-eval's openbookqa)."""
    if "question_stem" in row:  # hub schema
        texts, labels = list(row["choices"]["text"]), list(row["choices"]["label"])
    else:
        texts, labels = _labelled_choices(row)
    return _cloze(_stem(row), texts, labels.index(row["answerKey"]))


def winogrande(row: dict) -> dict:
    """WinoGrande: context = sentence up to "_" + option; shared continuation = the rest (partial scoring)."""
    sentence = row["sentence"]
    idx = sentence.index("_")
    options = [row["option1"], row["option2"]]
    rest = sentence[idx + 1:].strip()
    return _doc([sentence[:idx] + o for o in options], [" " + rest] * 2, [rest] * 2, int(row["answer"]) - 1)


def hellaswag_preprocess(text: str) -> str:
    """The harness's HellaSwag cleanup: " [title]" -> ". ", drop [bracketed] tags, collapse double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag(row: dict) -> dict:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    query = hellaswag_preprocess(row["activity_label"] + ": " + ctx)
    return _cloze(query, [hellaswag_preprocess(e) for e in row["endings"]], row["label"])


def mmlu(row: dict) -> dict:
    """MMLU cloze: csv [question, A, B, C, D, answer letter] or hub {question, choices, answer int}."""
    if "choices" in row:
        choices, gold = list(row["choices"]), int(row["answer"])
    else:
        choices, gold = [row[k] for k in "ABCD"], "ABCD".index(row["answer"].strip())
    return _cloze(f"Question: {row['question'].strip()}\nAnswer:", choices, gold)


def piqa(row: dict) -> dict:
    return _cloze(f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], row["label"])


def copa(row: dict) -> dict:
    """SuperGLUE COPA: premise minus its full stop + " because"/" therefore"; choices lower-cased first letter."""
    connector = {"cause": "because", "effect": "therefore"}[row["question"]]
    lower = [c[0].lower() + c[1:] for c in (row["choice1"], row["choice2"])]
    return _cloze(row["premise"].strip()[:-1] + f" {connector}", lower, row["label"])


def commonsense_qa(row: dict) -> dict:
    texts, labels = _labelled_choices(row)
    return _cloze(f"Question: {_stem(row)}\nAnswer:", texts, labels.index(row["answerKey"]))


# ----------------------------------------------------------------------------- files


def read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, row) from a .jsonl or a headerless MMLU-style .csv (question, A..D, answer)."""
    with open(path, newline="", encoding="utf-8") as f:
        if path.suffix == ".csv":
            for i, rec in enumerate(csv.reader(f), 1):
                if len(rec) != 6:
                    raise MalformedRowError(f"{path}:{i}: expected 6 csv fields (question, A, B, C, D, answer), "
                                            f"got {len(rec)}")
                yield i, dict(zip(("question", "A", "B", "C", "D", "answer"), rec))
            return
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield i, json.loads(line)
                except json.JSONDecodeError as e:
                    raise MalformedRowError(f"{path}:{i}: not valid JSON ({e})") from e


def convert_rows(rows, convert: Callable[[dict], dict], source: str, limit: int | None = None) -> list[dict]:
    """Apply a converter; a missing key or bad value raises MalformedRowError naming source:line."""
    docs = []
    for i, row in rows:
        if limit is not None and len(docs) >= limit:
            break
        try:
            docs.append(convert(row))
        except KeyError as e:
            raise MalformedRowError(f"{source}:{i}: missing key {e.args[0]!r} for this format") from e
        except (ValueError, TypeError, IndexError, AttributeError) as e:
            raise MalformedRowError(f"{source}:{i}: {type(e).__name__}: {e}") from e
    if not docs:
        raise MalformedRowError(f"{source}: no rows (an empty file?)")
    return docs


def load_file(path: str | Path, convert: Callable[[dict], dict], limit: int | None = None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"benchmark file {path} does not exist")
    return convert_rows(read_rows(path), convert, str(path), limit)


# ----------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    convert: Callable[[dict], dict]
    local: str | None  # file name under the data directory
    hub: tuple[str, str | None, str]  # (dataset id, config, split)
    hub_convert: Callable[[dict], dict] | None = None  # the hub schema when it differs from `local`'s
    kind: str = "mc"  # "mc": log-likelihood multiple choice (kanjax.evals.loglik); "bbh": generation (kanjax.evals.bbh)


def _mosaic(delimiter: str):
    return lambda row: mosaic_mc(row, delimiter)


TASKS: dict[str, TaskSpec] = {
    # MosaicML ICL files (local_data/ of llm-foundry); ARC's continuation delimiter is "\nAnswer: ".
    "arc_easy": TaskSpec(_mosaic("\nAnswer: "), "arc_easy.jsonl", ("allenai/ai2_arc", "ARC-Easy", "test"), arc),
    "arc_challenge": TaskSpec(_mosaic("\nAnswer: "), "arc_challenge.jsonl",
                              ("allenai/ai2_arc", "ARC-Challenge", "test"), arc),
    "openbook_qa": TaskSpec(_mosaic(" "), "openbook_qa.jsonl", ("allenai/openbookqa", "main", "test"), openbookqa),
    "copa": TaskSpec(_mosaic(" "), "copa.jsonl", ("aps/super_glue", "copa", "validation"), copa),
    "winogrande": TaskSpec(mosaic_schema, "winogrande.jsonl", ("allenai/winogrande", "winogrande_xl", "validation"),
                           winogrande),
    # Original release formats (hub schemas are read by the same converters).
    "hellaswag": TaskSpec(hellaswag, None, ("Rowan/hellaswag", None, "validation")),
    "piqa": TaskSpec(piqa, None, ("ybisk/piqa", None, "validation")),
    "mmlu_cloze": TaskSpec(mmlu, None, ("cais/mmlu", "all", "test")),
    "commonsense_qa": TaskSpec(commonsense_qa, None, ("tau/commonsense_qa", None, "validation")),
    "arc_easy_original": TaskSpec(arc, "original_format/arc_easy_test_sample.jsonl",
                                  ("allenai/ai2_arc", "ARC-Easy", "test")),
    "arc_challenge_original": TaskSpec(arc, "original_format/arc_challenge_test_sample.jsonl",
                                       ("allenai/ai2_arc", "ARC-Challenge", "test")),
    "openbook_qa_original": TaskSpec(openbookqa, "original_format/openbookqa_test_sample.jsonl",
                                     ("allenai/openbookqa", "main", "test")),
    "winogrande_original": TaskSpec(winogrande, "original_format/winogrande_dev_sample.jsonl",
                                    ("allenai/winogrande", "winogrande_xl", "validation")),
    "hellaswag_original": TaskSpec(hellaswag, "original_format/hellaswag_val_sample.jsonl",
                                   ("Rowan/hellaswag", None, "validation")),
    "mmlu_original": TaskSpec(mmlu, "original_format/mmlu_high_school_biology_test_sample.csv",
                              ("cais/mmlu", "high_school_biology", "test")),
}
TASKS.update({name: TaskSpec(None, f"{bbh.base_name(name)}.json", (bbh.HUB_ID, bbh.base_name(name), "test"),
                             kind="bbh") for name in bbh.task_names()})
GROUPS: dict[str, tuple[str, ...]] = {"bbh": bbh.task_names()}


def expand_tasks(names: Sequence[str]) -> list[str]:
    """Task names with groups ("bbh") expanded, duplicates dropped, order kept; unknown names fail."""
    out: list[str] = []
    for name in names:
        for task in GROUPS.get(name, (name,)):
            get_task(task)
            if task not in out:
                out.append(task)
    return out


def get_task(name: str) -> TaskSpec:
    if name not in TASKS:
        known = ", ".join(sorted(n for n in TASKS if TASKS[n].kind != "bbh"))
        raise InputError(f"unknown task {name!r}; known tasks: {known}; bbh_<task> for the BIG-Bench Hard "
                         f"tasks {', '.join(bbh.TASKS)}; groups: {', '.join(GROUPS)}")
    return TASKS[name]


def _load_hub(spec: TaskSpec, name: str, limit: int | None) -> list[dict]:
    dataset_id, config, split = spec.hub
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, config, split=split)
    except Exception as e:  # noqa: BLE001 - offline / missing dataset: say what to do instead
        raise FileNotFoundError(f"task {name!r}: no local file and the hub dataset {dataset_id} ({config}, {split}) "
                                f"could not be loaded ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                                f"pass local files: eval.py --data_dir <folder with {spec.local or name + '.jsonl'}>"
                                ) from e
    return convert_rows(enumerate(ds, 1), spec.hub_convert or spec.convert, f"{dataset_id}[{split}]", limit)


def load_task(name: str, data_dir: str | Path | None = None, path: str | Path | None = None,
              limit: int | None = None, *, cot: bool = False) -> list[dict]:
    """Docs of task `name`: from `path`, else `data_dir`/<the registry's file>, else the hub id.

    BBH tasks read `data_dir`/<name>.json (or `data_dir`/bbh/<name>.json) with the prompts in
    cot-prompts/ beside it; `cot` builds chain-of-thought prompts instead of answer-only ones.
    """
    spec = get_task(name)
    if spec.kind == "bbh":
        return bbh.load_docs(name, data_dir, path, limit, cot=cot)
    if path is not None:
        return load_file(path, spec.convert, limit)
    local = Path(data_dir) / spec.local if data_dir and spec.local else None
    if local is not None and local.is_file():
        return load_file(local, spec.convert, limit)
    return _load_hub(spec, name, limit)


__all__ = ["MalformedRowError", "TASKS", "GROUPS", "TaskSpec", "expand_tasks", "get_task", "load_task", "load_file", "read_rows",
           "convert_rows", "hellaswag_preprocess", "mosaic_mc", "mosaic_schema", "arc", "openbookqa",
           "winogrande", "hellaswag", "mmlu", "piqa", "copa", "commonsense_qa"]
