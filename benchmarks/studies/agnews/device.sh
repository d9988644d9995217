#!/usr/bin/env bash
# The AGNews study's remaining runs on an accelerator machine that cannot reach the internet (the
# `device` tool's H200: JAX 0.11 with CUDA, flax, transformers, ... but not all of kanjax's stack).
#
#   bash benchmarks/studies/agnews/device.sh prepare [--data_dir ../shared/data]
#       here, once per checkout: downloads the wheels the machine lacks (pinned as in requirements.txt,
#       CPython 3.12, manylinux) into .whl/ and copies AGNews and the SmolLM2 tokenizer into
#       .device_data/ (both ignored by git: .git/info/exclude), then prints the device call.
#   bash benchmarks/studies/agnews/device.sh run [--minutes 8] [--workers 8] [--phase study,tune] [--only REGEX] [--seeds S] [--quick]
#                                        [--from_image flax,optax,orbax-checkpoint]
#       there (carry .whl and .device_data): installs the wheels into /tmp/site, checks the stack, trains
#       every planned run without a record, --workers at a time, starting none after --minutes (the
#       runner's --until; a run still training at the end is lost), with float32 matmuls at full precision
#       (JAX_DEFAULT_MATMUL_PRECISION=highest: on a GPU they would otherwise run as TF32, unlike the CPU
#       runs they are paired with). The new records go to $OUT/agnews_records.tar, the logs of failed
#       runs to $OUT/failed_logs.tar, the last lines of every run's log to $OUT/run_log_ends.txt.
#       --quick: the runner's tiny budgets, records apart (runs/agnews_quick): a smoke test of the stack
#       on a new machine, never results. --from_image: packages taken from the
#       machine's image instead of the carried wheels (seen 2026-12-04: the image's JAX 0.11.2 lacks
#       jax.experimental.hijax.HiPrimitive, which flax 0.12.8 imports, so flax must be the image's own);
#       a name that matches no carried wheel stops the call. `wheels .whl flax,optax` lists what run installs.
#   bash benchmarks/studies/agnews/device.sh land FILE.tar [RECORDS_DIR]
#       here: adds the new records to RECORDS_DIR (default benchmarks/results/agnews/agnews_runs; an existing
#       record is never replaced) and regenerates agnews.md and kan_recipe.md beside it (for the default:
#       benchmarks/results/ and README's headline); the report names the seeds each machine trained.
#
# Device call (one command, under the tool's 10-minute limit; the tool copies $OUT's files back here):
#   run(command="bash benchmarks/studies/agnews/device.sh run --minutes 8 --from_image flax,optax,orbax-checkpoint",
#       carry=[".whl", ".device_data"], timeout_s=600)

set -euo pipefail
PYTHON="${PYTHON:-python3}"  # there: the image's python3 (the one with JAX and PyTorch)
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
RECORDS="$REPO/benchmarks/results/agnews/agnews_runs"
# What the machine's image lacks (flax, optax and orbax at the versions the suite runs on; JAX is its own).
PINNED=(ml_collections grain datasets flax optax orbax-checkpoint tensorboardX)
UNPINNED_DEPS=(dill multiprocess array_record portpicker fsspec)

pin() {  # the version requirements.txt pins, or the one installed here for a dependency it leaves open
  local v
  v="$(grep -i -E "^$1==" "$REPO/requirements.txt" | head -1 | cut -d= -f3 | cut -d' ' -f1)"
  [[ -n "$v" ]] || v="$("$PYTHON" -m pip show "$1" 2>/dev/null | awk '/^Version:/{print $2}')"
  [[ -n "$v" ]] || { echo "agnews_device.sh: no version of $1 pinned or installed here" >&2; exit 2; }
  echo "$1==$v"
}

prepare() {
  local data_dir="$REPO/../shared/data"
  while [[ $# -gt 0 ]]; do
    case "$1" in --data_dir) data_dir="$2"; shift 2 ;; *) echo "prepare: unknown argument $1" >&2; exit 2 ;; esac
  done
  for d in ag_news smollm2_tokenizer; do
    [[ -d "$data_dir/$d" ]] || { echo "prepare: no $data_dir/$d (pass --data_dir)" >&2; exit 2; }
  done
  mkdir -p "$REPO/.git/info"
  for p in /.whl/ /.device_data/; do grep -qxF "$p" "$REPO/.git/info/exclude" 2>/dev/null || echo "$p" >>"$REPO/.git/info/exclude"; done
  rm -rf "$REPO/.whl" "$REPO/.device_data"
  local specs=()
  for p in "${PINNED[@]}" "${UNPINNED_DEPS[@]}"; do specs+=("$(pin "$p")"); done
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$REPO/.whl" "${specs[@]}"
  mkdir -p "$REPO/.device_data"
  cp -r "$data_dir/ag_news" "$data_dir/smollm2_tokenizer" "$REPO/.device_data/"
  du -sh "$REPO/.whl" "$REPO/.device_data"
  echo "then:"; sed -n '/^#   run(command=/,/timeout_s=600)$/p' "${BASH_SOURCE[0]}" | sed 's/^# *//'  # the header's call
}

normalised() { tr '[:upper:]-.' '[:lower:]__' <<<"$1"; }  # a project name as a wheel's file name spells it

wheels_to_install() {  # DIR "flax,optax": the wheels in DIR, one path a line, less those of the projects named
  local dir="$1" w p name wanted=() found=() keep=()
  for p in ${2//,/ }; do wanted+=("$(normalised "$p")"); done
  for w in "$dir"/*.whl; do
    [[ -f "$w" ]] || continue
    name="${w##*/}"; name="$(normalised "${name%%-*}")"
    if [[ " ${wanted[*]} " == *" $name "* ]]; then
      echo "from the image: ${w##*/} not installed" >&2; found+=("$name")
    else
      keep+=("$w")
    fi
  done
  for p in "${wanted[@]}"; do  # a misspelt name would silently install the carried wheel
    [[ " ${found[*]} " == *" $p "* ]] || { echo "--from_image: no wheel of $p in $dir" >&2; exit 2; }
  done
  [[ ${#keep[@]} -eq 0 ]] || printf '%s\n' "${keep[@]}"
}

run_there() {
  local minutes=8 workers=8 phase="study,tune" only="" seeds="" quick=0 from_image=""
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --minutes) minutes="$2"; shift 2 ;; --workers) workers="$2"; shift 2 ;; --phase) phase="$2"; shift 2 ;;
      --only) only="$2"; shift 2 ;; --seeds) seeds="$2"; shift 2 ;; --quick) quick=1; shift ;;
      --from_image) from_image="$2"; shift 2 ;;
      *) echo "run: unknown argument $1" >&2; exit 2 ;;
    esac
  done
  local out="${OUT:-$REPO/runs/agnews_device}" start
  start="$(date +%s)"
  mkdir -p "$out"
  [[ -d "$REPO/.whl" && -d "$REPO/.device_data" ]] || { echo "run: carry .whl and .device_data (prepare makes them)" >&2; exit 2; }
  local listing keep=()
  listing="$(wheels_to_install "$REPO/.whl" "$from_image")"  # set -e: a --from_image naming no wheel stops here
  [[ -n "$listing" ]] && mapfile -t keep <<<"$listing"
  rm -rf /tmp/site  # a warm machine keeps the last call's packages: only this call's wheels may be there
  [[ ${#keep[@]} -gt 0 ]] && "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${keep[@]}"
  export PYTHONPATH="/tmp/site:$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  export JAX_DEFAULT_MATMUL_PRECISION=highest XLA_PYTHON_CLIENT_PREALLOCATE=false
  # The whole stack, imported as a run imports it: a mismatch fails here, in seconds, not in every run.
  "$PYTHON" - <<'EOF'
import importlib, importlib.metadata as md
import jax
print("devices:", jax.devices(), "precision:", jax.config.jax_default_matmul_precision)
for m in ("jax", "flax", "optax", "orbax-checkpoint", "grain", "datasets", "ml_collections", "transformers",
          "tokenizers", "numpy", "pyarrow", "fsspec", "huggingface_hub"):
    print(f"  {m} {md.version(m)}")
for m in ("flax.nnx", "optax", "orbax.checkpoint", "grain", "datasets", "ml_collections", "transformers",
          "kanjax.train_lib", "kanjax.data", "kanjax.data_arrays", "kanjax.data_sources"):
    importlib.import_module(m)
EOF
  touch "$out/.start"
  local workdirs="/tmp/agnews_device_work.$$" until_ts
  local args=(--phase "$phase" --workers "$workers" --no_report --data_dir "$REPO/.device_data" --workdirs "$workdirs")
  until_ts="$(date -d "@$((start + minutes * 60))" +%Y-%m-%dT%H:%M:%S)"
  [[ -n "$only" ]] && args+=(--only "$only")
  [[ -n "$seeds" ]] && args+=(--seeds "$seeds")
  local records="$RECORDS"
  if [[ "$quick" == 1 ]]; then args+=(--quick); records="$REPO/runs/agnews_quick/records"; mkdir -p "$records"; fi
  # --until starts no run expected to end after the deadline (once a run on this machine has been timed);
  # the timeout ends what is still training a minute past it, so the records come back within the call.
  timeout --kill-after=10 "$(( minutes * 60 + 60 - ($(date +%s) - start) ))" \
    bash -c 'cd "$0" && exec "$1" -m benchmarks.studies.agnews.study "${@:2}"' "$REPO" "$PYTHON" "${args[@]}" --until "$until_ts" 2>&1 | tee "$out/runner.log" \
    || echo "runner ended: exit $?"
  # timeout signals the runner's process group, its runs included; a run the runner left behind (the
  # runner itself failed) is found by this call's own run folder: never another study's runs.
  pkill -f -- "benchmarks.studies.agnews.study --one .* --workdirs $workdirs( |$)" || true
  (cd "$records" && find . -name '*__seed*.json' -newer "$out/.start" | sort >"$out/new_records.txt")
  echo "$(wc -l <"$out/new_records.txt") new record(s) in $records"
  tar -cf "$out/agnews_records.tar" -C "$records" -T "$out/new_records.txt"
  # The runner names the log of each run that failed: the first few come back, and their ends are shown.
  local failed
  failed="$(grep -o 'FAILED (exit [^,]*, log [^)]*)' "$out/runner.log" | sed 's/.*, log //; s/)$//' | head -4 || true)"
  if [[ -n "$failed" ]]; then
    tar -cf "$out/failed_logs.tar" $failed
    for f in $failed; do echo "== $f"; tail -n 15 "$f"; done
  fi
  # Every run's log ends, finished or cut off (progress bars' \r made lines): where each run's time went.
  # Seen 2026-12-04: 0.007 s a step, but none of 8 runs at a time ended inside 8 minutes (the first step,
  # its compilation, took 57 s with the machine to itself).
  for f in "$workdirs"/*/*.log; do
    [[ -f "$f" ]] && { echo "== $f"; tail -c 20000 "$f" | tr '\r' '\n' | grep -v -E '^ *$|^ *\[? *(True|False)' | tail -n 12; }
  done >"$out/run_log_ends.txt" 2>&1 || true
  rm -f "$out/.start"
}

land() {
  local tarball="${1:?land: which .tar?}" records="${2:-$RECORDS}" before after report=()
  [[ "$records" != "$RECORDS" ]] && report=(--records "$records")
  mkdir -p "$records"
  before="$(find "$records" -name '*__seed*.json' | wc -l)"
  tar -xkf "$tarball" -C "$records" 2>&1 | grep -v -e "File exists" -e "Exiting with failure" || true  # -k: keep
  after="$(find "$records" -name '*__seed*.json' | wc -l)"
  echo "$((after - before)) record(s) added to $records"
  (cd "$REPO" && "$PYTHON" -m benchmarks.studies.agnews.study --report_only "${report[@]}")
}

cmd="${1:-}"; shift || true
case "$cmd" in
  prepare) prepare "$@" ;;
  run) run_there "$@" ;;
  land) land "$@" ;;
  wheels) wheels_to_install "$@" ;;  # what `run` would install: wheels DIR flax,optax
  *) sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
