"""Where a jitted step spends its time: XLA's per-op trace events, grouped by what the op computes and
by the pass it belongs to.

`profile(run, hlo_text, steps)` traces `steps` calls of `run` with `jax.profiler` (a Perfetto trace,
read back from its JSON), matches each event to the instruction of the compiled module
(`jitted.lower(...).compile().as_text()`) that it executed, and sums the durations per

- kind: what the instruction (for a fusion: its fused computation, followed through nested calls)
  contains, by priority: `matmul` (dot or convolution), `scatter`, `gather`, `reduction`,
  `layout copy` (only copies, transposes, bitcasts, slices), else `elementwise`;
- pass: from the instruction's `op_name` metadata, which JAX writes as `jvp(...)` for the forward
  pass and `transpose(jvp(...))` for the backward pass: `backward`, `forward`, or `optimizer & rest`
  (update, clipping, norms, and whatever has no such marker).

Durations are summed per op, so ops that XLA runs concurrently on different threads both count:
the shares are of the summed op time, not of the wall time (which `train_step.py` times apart).
A dot that XLA:CPU runs through Eigen rather than YNNPACK (here the weight gradients, whose lhs is
contracted over its first axis) is under-counted: its trace event ends when the work is handed to
Eigen's threads, while that work goes on beside the next ops (benchmarks/results/perf/kan_cost.md).
"""

from __future__ import annotations

import collections
import gzip
import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax

KINDS = ("matmul", "scatter", "gather", "reduction", "layout copy", "elementwise")
PASSES = ("forward", "backward", "optimizer & rest")
_LAYOUT = {"copy", "transpose", "bitcast", "slice", "parameter", "reshape", "broadcast", "constant", "tuple",
           "get-tuple-element", "concatenate", "pad", "dynamic-slice", "dynamic-update-slice"}
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(?:\([^=]*?\)|\S+)\s+([\w\-]+)\(")


def parse_hlo(hlo_text: str) -> tuple[dict[str, list[tuple[str, str, list[str], str]]], dict[str, str]]:
    """-> ({computation: [(instruction, opcode, called computations, op_name)]}, {instruction: computation})."""
    comps: dict[str, list] = {}
    where: dict[str, str] = {}
    current = None
    for line in hlo_text.splitlines():
        if current is None:
            m = _COMPUTATION.match(line)
            if m and not line.lstrip().startswith(("HloModule", "//")):
                current = m.group(1)
                comps[current] = []
            continue
        if line.strip() == "}":
            current = None
            continue
        m = _INSTRUCTION.match(line)
        if m:
            calls = re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", line)
            calls += [c for group in re.findall(r"(?:branch_computations|called_computations)=\{([^}]*)\}", line)
                      for c in re.findall(r"%?([\w.\-]+)", group)]
            op_name = re.search(r'op_name="([^"]*)"', line)
            comps[current].append((m.group(1), m.group(2), calls, op_name.group(1) if op_name else ""))
            where[m.group(1)] = current
    return comps, where


def _opcodes(comps: dict, comp: str, seen: set | None = None) -> set[str]:
    """Every opcode in `comp` and the computations it calls (a reduce's tiny adder counts as reduction)."""
    seen = set() if seen is None else seen
    if comp in seen or comp not in comps:
        return set()
    seen.add(comp)
    out = set()
    for _, opcode, calls, _ in comps[comp]:
        out.add(opcode)
        if opcode in ("reduce", "reduce-window", "scatter", "sort", "all-reduce", "select-and-scatter"):
            continue  # their to_apply is a scalar combiner, not work of its own
        for c in calls:
            out |= _opcodes(comps, c, seen)
    return out


def kind_of(opcodes: set[str]) -> str:
    if opcodes & {"dot", "convolution"}:
        return "matmul"
    for kind in ("scatter", "gather"):
        if kind in opcodes:
            return kind
    if opcodes & {"reduce", "reduce-window"}:  # XLA:CPU tiles long sums (the gradient norm) as reduce-windows
        return "reduction"
    if opcodes and opcodes <= _LAYOUT:
        return "layout copy"
    return "elementwise"


def pass_of(op_name: str) -> str:
    if "transpose(" in op_name:
        return "backward"
    if "jvp(" in op_name:
        return "forward"
    return "optimizer & rest"


def classify(hlo_text: str) -> dict[str, tuple[str, str]]:
    """{instruction name: (kind, pass)} for every instruction of the compiled module."""
    comps, _ = parse_hlo(hlo_text)
    out = {}
    for comp in comps.values():
        for name, opcode, calls, op_name in comp:
            ops = {opcode} if opcode not in ("fusion", "call", "custom-call") else set()
            for c in calls:
                ops |= _opcodes(comps, c)
            out[name] = (kind_of(ops or {opcode}), pass_of(op_name))
    return out


def trace_durations(run: Callable[[], object], steps: int) -> dict[str, float]:
    """{event name: summed seconds} of the complete ('X') events of `steps` calls of run()."""
    with tempfile.TemporaryDirectory() as d:
        jax.profiler.start_trace(d, create_perfetto_trace=True)
        try:
            for _ in range(steps):
                run()
        finally:
            jax.profiler.stop_trace()
        path = next(Path(d).rglob("*.trace.json.gz"))
        with gzip.open(path) as f:
            events = json.load(f)["traceEvents"]
    total: dict[str, float] = collections.Counter()
    for e in events:
        if e.get("ph") == "X":
            total[e["name"]] += e.get("dur", 0) / 1e6
    return dict(total)


def profile(run: Callable[[], object], hlo_text: str, steps: int = 3) -> dict[tuple[str, str], float]:
    """{(kind, pass): seconds per step} summed over the ops of the compiled step; unmatched trace events
    (Python frames, the executor's own spans) are left out."""
    ops = classify(hlo_text)
    out: dict[tuple[str, str], float] = collections.Counter()
    for name, seconds in trace_durations(run, steps).items():
        if name in ops:
            out[ops[name]] += seconds / steps
    return dict(out)


def table(profiles: dict[str, dict[tuple[str, str], float]]) -> str:
    """Markdown: per arm and kind, ms per step in each pass and the share of the arm's summed op time."""
    lines = ["| arm | op kind | " + " | ".join(f"{p} ms" for p in PASSES) + " | total ms | share |",
             "|---|---|" + "---:|" * (len(PASSES) + 2)]
    for arm, prof in profiles.items():
        grand = sum(prof.values()) or 1.0
        for kind in KINDS:
            cells = [prof.get((kind, p), 0.0) for p in PASSES]
            if sum(cells) == 0:
                continue
            lines.append(f"| {arm} | {kind} | " + " | ".join(f"{1e3 * c:.1f}" for c in cells) +
                         f" | {1e3 * sum(cells):.1f} | {100 * sum(cells) / grand:.0f}% |")
        per_pass = [sum(v for (k, p), v in prof.items() if p == q) for q in PASSES]
        lines.append(f"| {arm} | **all ops** | " + " | ".join(f"{1e3 * c:.1f}" for c in per_pass) +
                     f" | {1e3 * grand:.1f} | 100% |")
    return "\n".join(lines)
