"""The shape of the package: three floors, imports only downward or sideways, no circle, no path
into the development checkout's data, no module far over 450 lines, one copy of the bases."""

import ast
import re
from pathlib import Path


PKG = Path(__file__).resolve().parents[1] / "kanjax"
GROUND = {"basis_terms", "basis", "matmul", "attention", "llama", "surgery", "kan", "kan_spec", "kanify", "sharding", "train_lib",
          "diagnostics", "data_arrays", "evaluate", "generate", "viz", "config", "hf_names", "hf_gguf", "metrics",
          "bbh", "distill", "distill_in_situ", "packing", "workdir_lock", "signals", "divergence"}
MIDDLE = {"tfds_source", "data_sources", "data", "checkpoint", "hf_kan", "hf_folder", "hf", "experiment", "eval_tasks",
          "resume"}
TOP = {"train_loop", "eval_models", "lm_eval_adapter"}
LEVEL = {**{m: 0 for m in GROUND}, **{m: 1 for m in MIDDLE}, **{m: 2 for m in TOP}}


def imports() -> dict[str, set[str]]:
    """{module: kanjax modules it imports}, module-level and function-level imports alike."""
    graph = {}
    for path in PKG.glob("*.py"):
        if path.stem == "__init__":
            continue
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "kanjax":
                if node.module == "kanjax":
                    found |= {a.name for a in node.names}
                else:
                    found.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("kanjax.")}
        graph[path.stem] = found - {path.stem}
    return graph


def test_every_module_has_a_floor_and_imports_only_downward_or_sideways():
    graph = imports()
    assert set(graph) == set(LEVEL), f"modules without a floor: {set(graph) - set(LEVEL)}"
    upward = [(m, d) for m, deps in graph.items() for d in deps if d in LEVEL and LEVEL[d] > LEVEL[m]]
    assert not upward, f"imports from a lower floor to a higher one: {upward}"
    assert not ({"train_loop"} & graph["eval_models"] or {"eval_models"} & graph["train_loop"])


def test_no_import_circle():
    graph = imports()
    state = {}

    def visit(m, stack):
        state[m] = "open"
        for d in graph.get(m, ()):
            if state.get(d) == "open":
                raise AssertionError(f"import circle: {' -> '.join(stack + [m, d])}")
            if d not in state:
                visit(d, stack + [m])
        state[m] = "done"

    for m in graph:
        if m not in state:
            visit(m, [])


def test_no_development_data_path_and_no_module_far_over_450_lines():
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        assert "shared/data" not in text and "../shared" not in text, path
        assert len(text.splitlines()) <= 460, path


def test_the_exported_modelling_code_defines_no_basis_of_its_own():
    remote = (PKG / "hf_remote" / "modeling_kanjax_llama.py").read_text()
    assert "from .kanjax_basis import" in remote
    assert not re.search(r"def _(chebyshev|legendre|jacobi|recurrence|bspline|rbf|rational)\b", remote)
    assert "def squash" not in remote and "def column_" not in remote
