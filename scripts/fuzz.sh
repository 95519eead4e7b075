#!/usr/bin/env bash
# Fuzzes every parser of untrusted bytes with AFL++ (docs/fuzzing.md).
#
#   scripts/fuzz.sh [DURATION] [TARGET...]
#
# DURATION is per target (20s, 10m, 1h; default 20s); TARGETs default to
# all of them. Builds fuzz/ with `cargo afl`, replays the saved crash
# inputs of fuzz/regressions/, then runs each target from its seed corpus
# (fuzz/corpus/<target>/) and replays every crash and hang it saved. A
# crash whose panic is listed in fuzz/known-crashes.tsv is a known defect
# and is reported without failing; any other crash or hang fails the run.
#
# Environment: SSEGATE_FUZZ_JOBS targets at once (default 2, the cores of
# this kind of machine); SSEGATE_FUZZ_OUT where AFL++ writes (default
# fuzz/out, emptied per target); CARGO_TARGET_DIR (default a cache outside
# the work tree, so that a fresh clone does not rebuild the instrumented
# dependencies).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

ALL_TARGETS=(http_head cursor envelope resp jwt_claims)
case "${1:-}" in -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;; esac
duration=${1:-20s}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
jobs=${SSEGATE_FUZZ_JOBS:-2}
out=${SSEGATE_FUZZ_OUT:-$root/fuzz/out}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ssegate/fuzz-target}

case "$duration" in
  *h) secs=$((${duration%h} * 3600)) ;;
  *m) secs=$((${duration%m} * 60)) ;;
  *s) secs=${duration%s} ;;
  *) secs=$duration ;;
esac
[[ "$secs" =~ ^[0-9]+$ && "$secs" -gt 0 ]] || { echo "fuzz.sh: bad duration '$duration' (20s, 10m, 1h)" >&2; exit 2; }
for t in "${targets[@]}"; do
  [ -d "fuzz/corpus/$t" ] || { echo "fuzz.sh: unknown target '$t' (${ALL_TARGETS[*]})" >&2; exit 2; }
done

# What this machine needs: no CPU frequency governor to check (a VM has
# none), crashes may go wherever core_pattern sends them, no terminal UI,
# no core pinning (other builds share the cores), calibration kept short.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
export AFL_NO_AFFINITY=1 AFL_FAST_CAL=1
# A replayed crash prints its backtrace: the known-crash check reads it.
export RUST_BACKTRACE=1

command -v cargo-afl >/dev/null 2>&1 || {
  echo "fuzz.sh: cargo-afl is missing: cargo install --locked cargo-afl" >&2
  exit 2
}
# cargo-afl builds its own AFL++ (fuzzer and runtime of one version) per
# Rust toolchain; it refuses to build it twice, which is fine here.
if ! msg=$(cargo afl config --build 2>&1); then
  case "$msg" in
    *"already built"*) ;;
    *) echo "$msg" >&2; echo "fuzz.sh: cannot build AFL++" >&2; exit 2 ;;
  esac
fi

echo "== fuzz: building fuzz/ with cargo afl (target dir $CARGO_TARGET_DIR)"
# Not --locked: fuzz/ depends on the gateway by path, so its lock file
# follows the gateway's dependencies.
(cd fuzz && cargo afl build --release --quiet)
bin=$CARGO_TARGET_DIR/release

# replay TARGET FILE: prints "passes", "hangs", "known: <what>" or
# "NEW: <panic message>".
replay() {
  local target=$1 file=$2 log rc=0
  log=$(timeout 10 "$bin/$target" < "$file" 2>&1) || rc=$?
  if [ "$rc" -eq 0 ]; then echo "passes"; return; fi
  if [ "$rc" -eq 124 ]; then echo "NEW: hangs (over 10 s)"; return; fi
  local t message frame what
  while IFS=$'\t' read -r t message frame what; do
    [[ -z "$t" || "$t" == \#* || "$t" != "$target" ]] && continue
    if [[ "$log" == *"$message"* && "$log" == *"$frame"* ]]; then
      echo "known: $what"
      return
    fi
  done < fuzz/known-crashes.tsv
  echo "NEW: $(grep -m1 -A1 'panicked at' <<<"$log" | tail -n1)"
}

failed=0
echo "== fuzz: saved crash inputs (fuzz/regressions/), replayed"
for dir in fuzz/regressions/*/; do
  target=$(basename "$dir")
  for f in "$dir"*; do
    [ -f "$f" ] || continue
    verdict=$(replay "$target" "$f")
    echo "   $target/$(basename "$f"): $verdict"
    [[ "$verdict" == NEW* ]] && failed=1
  done
done

run() { # target
  local t=$1 dir=$out/$1
  rm -rf "$dir"
  mkdir -p "$dir"
  cargo afl fuzz -V "$secs" -i "fuzz/corpus/$t" -o "$dir" "$bin/$t" > "$dir/afl.log" 2>&1 \
    || echo "afl-fuzz exited with status $?" >> "$dir/afl.log"
}

report() { # target
  local t=$1 dir=$out/$1 stats=$out/$1/default/fuzzer_stats
  if [ ! -f "$stats" ]; then
    echo "== $t: afl-fuzz did not run"
    tail -n 20 "$dir/afl.log"
    failed=1
    return
  fi
  field() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
  local crashes hangs
  crashes=$(find "$dir/default/crashes" -name 'id:*' | wc -l)
  hangs=$(find "$dir/default/hangs" -name 'id:*' | wc -l)
  echo "== $t: $(field execs_done) execs, $(field execs_per_sec)/s, $(field edges_found)/$(field total_edges) edges," \
    "$(field corpus_count) paths, $(field stability) stable, $crashes crashes, $hangs hangs, $(field run_time) s"
  local first
  first=$(find "$dir/default/crashes" -name 'id:*' -printf '%f\n' | sort | head -n1)
  [ -n "$first" ] && echo "   first crash: $first"
  declare -A seen=()
  for f in "$dir"/default/crashes/id:* "$dir"/default/hangs/id:*; do
    [ -f "$f" ] || continue
    local verdict
    verdict=$(replay "$t" "$f")
    case "$verdict" in
      passes) # A hang that completes given time: the machine was busy.
        if [[ "$f" == */hangs/* ]]; then
          verdict="hang that passes when given time (slow, not stuck)"
        else
          verdict="crash not reproduced on replay"
        fi ;;
      NEW*) failed=1 ;;
    esac
    seen[$verdict]=$((${seen[$verdict]:-0} + 1))
    [ "${seen[$verdict]}" -eq 1 ] && echo "   $verdict, e.g. $f"
  done
  for v in "${!seen[@]}"; do
    [ "${seen[$v]}" -gt 1 ] && echo "   ... $v: ${seen[$v]} inputs in all"
  done
  return 0
}

echo "== fuzz: ${targets[*]}, $secs s each, $jobs at a time, output in $out"
for ((i = 0; i < ${#targets[@]}; i += jobs)); do
  batch=("${targets[@]:i:jobs}")
  for t in "${batch[@]}"; do run "$t" & done
  wait
  for t in "${batch[@]}"; do report "$t"; done
done

if [ "$failed" -ne 0 ]; then
  echo "== fuzz: NEW crashes or hangs above; reproduce one with: $bin/<target> < <file>" >&2
  exit 1
fi
echo "== fuzz: no new crash"
