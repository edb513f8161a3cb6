#!/usr/bin/env bash
# The GPU run: carried as gpu-bundle/run.sh by tools/gpu_bundle.sh and run on the GPU machine from
# the repo root, with no Rust toolchain and no network:
#
#   bash gpu-bundle/run.sh
#
# Runs the carried test binaries (the hardware probe first, then the gpu* ones, then the rest), the
# gpu* bench binaries and bench_diffusers_gpu.py, and writes a report into ${OUT:-gpu-report}:
# device.txt, tests.log, benches.log, diffusers.json, diffusers.log, summary.md (also printed at
# the end) and probe/<device>.json, the raw bits the hardware probe recorded
# (tests/hardware_probe.rs; commit it as bench/gpu/probe/h200.json). It carries on past every
# failure and exits 1 at the end if a test binary failed, crashed or timed out.
#
# Environment (all optional):
#   SKIP_TESTS=1 SKIP_BENCHES=1 SKIP_DIFFUSERS=1   leave a part out
#   TEST_FILTER=regex     test binaries to run (default: all; gpu* ones first)
#   TEST_ARGS="..."       extra libtest arguments, e.g. a test name filter
#   BENCH_FILTER=regex    bench binaries to run (default ^gpu; '.' runs the CPU ones too)
#   BENCH_ARGS="..."      extra arguments for the benches, e.g. a criterion filter
#   DIFFUSERS_ARGS="..."  arguments for bench_diffusers_gpu.py (default --fp32-strict)
#   PYTHON=python3        the Python that has torch
#   FREELUNCH_PROBE_OUT=dir   where the hardware probe writes its record (default $OUT/probe)
#   BUDGET_S=540          the whole run's time budget in seconds; later parts keep a reserve
#   TEST_TIMEOUT=300 BENCH_TIMEOUT=240 DIFFUSERS_TIMEOUT=240   per-binary limits in seconds
set -uo pipefail

start=$(date +%s)
now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
left() { echo $((start + BUDGET_S - $(date +%s))); }
say() { echo "[gpu_run +$(($(date +%s) - start))s] $*"; }

BUDGET_S=${BUDGET_S:-540}
TEST_TIMEOUT=${TEST_TIMEOUT:-300}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-240}
DIFFUSERS_TIMEOUT=${DIFFUSERS_TIMEOUT:-240}
TEST_FILTER=${TEST_FILTER:-.}
BENCH_FILTER=${BENCH_FILTER:-^gpu}
PYTHON=${PYTHON:-python3}
SKIP_TESTS=${SKIP_TESTS:-0}
SKIP_BENCHES=${SKIP_BENCHES:-0}
SKIP_DIFFUSERS=${SKIP_DIFFUSERS:-0}
read -r -a test_args <<<"${TEST_ARGS:-}"
read -r -a bench_args <<<"${BENCH_ARGS:-}"
read -r -a diffusers_args <<<"${DIFFUSERS_ARGS:---fp32-strict}"
SKIP_LINE='skipped: no CUDA device'

# The bundle is this script's folder (gpu-bundle/run.sh); tools/gpu_run.sh looks in ./gpu-bundle.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [[ ! -f $here/COMMIT && -d $PWD/gpu-bundle ]]; then
    here=$PWD/gpu-bundle
fi

out=${OUT:-gpu-report}
mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The binaries: tests/, benches/ and bin/ beside this script, or packed in bins.tar.xz (xz, else
# Python's tarfile where there is no xz).
bindir=$here
unpacked=""
if [[ ! -d $here/tests && -f $here/bins.tar.xz ]]; then
    bindir=$tmp/bins
    mkdir -p "$bindir"
    if command -v xz >/dev/null 2>&1 && tar -C "$bindir" -xJf "$here/bins.tar.xz" 2>"$tmp/unpack.err"; then
        unpacked="bins.tar.xz unpacked with tar/xz"
    elif "$PYTHON" -c 'import sys, tarfile
kw = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
tarfile.open(sys.argv[1]).extractall(sys.argv[2], **kw)' \
        "$here/bins.tar.xz" "$bindir" 2>>"$tmp/unpack.err"; then
        unpacked="bins.tar.xz unpacked with Python's tarfile"
    else
        unpacked="bins.tar.xz could not be unpacked: $(tail -n 2 "$tmp/unpack.err" | tr '\n' ' ')"
    fi
fi

# Where the binaries find the repo, the CLI and scratch space (see tests/common/mod.rs).
export FREELUNCH_ROOT=${FREELUNCH_ROOT:-$PWD}
export FREELUNCH_BIN=${FREELUNCH_BIN:-$bindir/bin/freelunch}
# The PTX executor's libraries (for the emu_* tests, which run on it even here).
export FREELUNCH_EMU_DIR=${FREELUNCH_EMU_DIR:-$bindir/bin}
export FREELUNCH_SCRATCH=${FREELUNCH_SCRATCH:-$tmp/scratch}
# The hardware probe's record (tests/hardware_probe.rs) comes back with the report.
export FREELUNCH_PROBE_OUT=${FREELUNCH_PROBE_OUT:-$out/probe}
export CRITERION_HOME=${CRITERION_HOME:-$tmp/criterion}
export RUST_BACKTRACE=${RUST_BACKTRACE:-1}
mkdir -p "$FREELUNCH_SCRATCH"

# ---------------------------------------------------------------------------- setup
setup=$tmp/setup.txt
: >"$setup"
if [[ -n $unpacked ]]; then
    echo "$unpacked" >>"$setup"
fi

# The Python with torch: its version, CUDA, and where its nvidia-* wheels keep their libraries.
torch_info=$tmp/torch.txt
if timeout 120 "$PYTHON" - >"$torch_info" 2>"$tmp/torch.err" <<'EOF'; then
import os, sys
import torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__)
print("torch_cuda", torch.version.cuda)
print("cuda_available", torch.cuda.is_available())
print("torch_dir", os.path.dirname(torch.__file__))
EOF
    torch_ok=1
else
    torch_ok=0
    echo "torch: not importable by $PYTHON: $(tail -n 1 "$tmp/torch.err")" >>"$setup"
fi
torch_field() { sed -n "s/^$1 //p" "$torch_info" 2>/dev/null | head -n 1; }
torch_dir=$(torch_field torch_dir)
cuda_for_torch=$(torch_field cuda_available)

libdirs=(/usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib)
if [[ -n $torch_dir ]]; then
    for d in "$torch_dir"/../nvidia/*/lib; do
        libdirs+=("$d")
    done
fi
added=()
for d in "${libdirs[@]}"; do
    if [[ -d $d ]]; then
        d=$(cd "$d" && pwd)
        added+=("$d")
        LD_LIBRARY_PATH=$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    fi
done
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}
echo "LD_LIBRARY_PATH added: ${added[*]:-none}" >>"$setup"

# Carried wheels (diffusers) into /tmp/site.
shopt -s nullglob
wheels=("$here"/wheels/*.whl)
shopt -u nullglob
if [[ $SKIP_DIFFUSERS == 1 ]]; then
    echo "wheels: not installed (SKIP_DIFFUSERS=1)" >>"$setup"
elif ((${#wheels[@]})); then
    if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${wheels[@]}" >"$tmp/pip.log" 2>&1; then
        export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
        echo "wheels: installed into /tmp/site: $(basename -a "${wheels[@]}" | tr '\n' ' ')" >>"$setup"
    else
        echo "wheels: pip install failed: $(tail -n 3 "$tmp/pip.log" | tr '\n' ' ')" >>"$setup"
    fi
else
    echo "wheels: none carried" >>"$setup"
fi

# ---------------------------------------------------------------------------- device.txt
gpu_csv=$tmp/gpu.csv
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "host: $(uname -n) $(uname -srm), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "libc: $(ldd --version 2>&1 | head -n 1)"
    echo "commit: $(cat "$here/COMMIT" 2>/dev/null || echo unknown)"
    echo "repo root: $FREELUNCH_ROOT"
    echo
    echo "== BUILT"
    cat "$here/BUILT" 2>/dev/null || echo "no BUILT file"
    echo
    echo "== GPU"
    if command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 |
            tee "$gpu_csv"
        echo
        timeout 60 nvidia-smi 2>&1 | head -n 20
    else
        echo "nvidia-smi not found"
    fi
    echo
    echo "== CUDA libraries"
    ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libnvrtc' || echo "ldconfig: no libcuda / libnvrtc"
    for d in "${added[@]}"; do
        compgen -G "$d/libnvrtc*.so*" >/dev/null && ls "$d"/libnvrtc*.so*
        compgen -G "$d/libcublas.so*" >/dev/null && ls "$d"/libcublas.so*
    done
    echo
    echo "== Python"
    cat "$torch_info" 2>/dev/null
    echo
    echo "== setup"
    cat "$setup"
} >"$out/device.txt" 2>&1

gpu_name=unknown driver=unknown gpu_mem=unknown gpu_clock=unknown
if [[ -s $gpu_csv ]] && IFS=, read -r gpu_name driver gpu_mem gpu_clock < <(sed -n 2p "$gpu_csv"); then
    gpu_name=${gpu_name# } driver=${driver# } gpu_mem=${gpu_mem# } gpu_clock=${gpu_clock# }
elif ! command -v nvidia-smi >/dev/null 2>&1; then
    gpu_name="none (nvidia-smi not found)"
fi
say "device: $gpu_name, driver $driver; torch sees CUDA: ${cuda_for_torch:-no torch}"

# Reserves for the parts after the tests, so that a slow test run leaves them time: 150 s for
# diffusers, 60 s for each selected bench (240 s at most).
reserve_diffusers=0
if [[ $SKIP_DIFFUSERS != 1 ]]; then
    reserve_diffusers=150
fi
reserve_benches=0
if [[ $SKIP_BENCHES != 1 && -f $here/benches.tsv ]]; then
    while IFS=$'\t' read -r name _; do
        [[ $name =~ $BENCH_FILTER ]] && reserve_benches=$((reserve_benches + 60))
    done <"$here/benches.tsv"
    ((reserve_benches > 240)) && reserve_benches=240
fi

# Runs "$@" with a timeout of min($1, time left before $2 s of the budget remain). Prints the
# outcome to $tmp/run.{rc,secs}; output goes where the caller sends it.
limited() {
    local cap=$1 keep=$2
    shift 2
    local t0 limit rc
    limit=$(($(left) - keep))
    if ((limit < 5)); then
        echo "out of time: not run" >&2
        echo skip >"$tmp/run.rc"
        echo 0 >"$tmp/run.secs"
        return
    fi
    ((limit > cap)) && limit=$cap
    t0=$(now)
    (cd "$FREELUNCH_ROOT" && timeout -k 10 "$limit" "$@" </dev/null)
    rc=$?
    echo "$rc" >"$tmp/run.rc"
    secs "$t0" "$(now)" >"$tmp/run.secs"
}

# Keeps a log readable when a binary floods it: the first 500 and last 2500 lines.
clip() {
    local n
    n=$(wc -l <"$1")
    if ((n > 3000)); then
        head -n 500 "$1"
        echo "[... $((n - 3000)) lines left out ...]"
        tail -n 2500 "$1"
    else
        cat "$1"
    fi
}

# ---------------------------------------------------------------------------- tests
tests_rows=$tmp/tests.tsv
: >"$tests_rows"
: >"$out/tests.log"
tests_failed=0
failed_names=$tmp/failed.txt
: >"$failed_names"
if [[ $SKIP_TESTS == 1 ]]; then
    echo "skipped (SKIP_TESTS=1)" >"$out/tests.log"
elif [[ ! -d $bindir/tests ]]; then
    echo "no test binaries in $bindir/tests" >"$out/tests.log"
    tests_failed=1
else
    bins=()
    # The hardware probe first: its record is worth the most if the run is cut short.
    for f in "$bindir"/tests/hardware_probe "$bindir"/tests/gpu* "$bindir"/tests/*; do
        [[ -f $f && -x $f ]] || continue
        name=$(basename "$f")
        [[ $name =~ $TEST_FILTER ]] || continue
        [[ " ${bins[*]:-} " == *" $f "* ]] && continue
        bins+=("$f")
    done
    keep=$((reserve_diffusers + reserve_benches + 10))
    for f in "${bins[@]}"; do
        name=$(basename "$f")
        if [[ $name == gpu* || $name == hardware_probe ]]; then
            args=(--test-threads=1 --nocapture)
        else
            args=(--show-output)
        fi
        say "test $name"
        limited "$TEST_TIMEOUT" "$keep" "$f" "${args[@]}" "${test_args[@]}" >"$tmp/log" 2>&1
        rc=$(cat "$tmp/run.rc")
        took=$(cat "$tmp/run.secs")
        # libtest's last line: "test result: ok. 12 passed; 0 failed; 1 ignored; ...".
        result=$(grep -E '^test result:' "$tmp/log" | tail -n 1)
        passed=$(sed -nE 's/.* ([0-9]+) passed.*/\1/p' <<<"$result")
        failed=$(sed -nE 's/.* ([0-9]+) failed.*/\1/p' <<<"$result")
        ignored=$(sed -nE 's/.* ([0-9]+) ignored.*/\1/p' <<<"$result")
        skipped=$(grep -c -F "$SKIP_LINE" "$tmp/log")
        case $rc in
            0) status=ok ;;
            skip) status="not run (out of time)" ;;
            124 | 137) status="TIMEOUT" ;;
            *) if [[ -n $result ]]; then status=FAIL; else status="CRASH (rc $rc)"; fi ;;
        esac
        if [[ $rc != 0 ]]; then
            tests_failed=1
            grep -E '^test .* \.\.\. FAILED$' "$tmp/log" | sed -E "s/^test (.*) \.\.\. FAILED$/$name: \1/" >>"$failed_names"
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "${passed:--}" "${failed:--}" \
            "${ignored:--}" "$skipped" "$took" >>"$tests_rows"
        {
            echo "==== $name: $status, rc $rc, ${took} s, args: ${args[*]} ${test_args[*]:-}"
            clip "$tmp/log"
            echo
        } >>"$out/tests.log"
    done
    if ((${#bins[@]} == 0)); then
        echo "no test binary matched TEST_FILTER=$TEST_FILTER" >>"$out/tests.log"
    fi
fi

# ---------------------------------------------------------------------------- benches
bench_rows=$tmp/benches.tsv
: >"$bench_rows"
: >"$out/benches.log"
bench_note=""
if [[ $SKIP_BENCHES == 1 ]]; then
    bench_note="skipped (SKIP_BENCHES=1)"
elif [[ ! -f $here/benches.tsv ]]; then
    bench_note="no benches.tsv in $here"
else
    ran=0
    available=()
    while IFS=$'\t' read -r name kind; do
        available+=("$name")
        [[ $name =~ $BENCH_FILTER ]] || continue
        f=$bindir/benches/$name
        [[ -x $f ]] || continue
        ran=$((ran + 1))
        if [[ $kind == criterion ]]; then
            args=(--bench --noplot --warm-up-time 1 --measurement-time 3)
        else
            args=(--bench)
        fi
        say "bench $name ($kind)"
        limited "$BENCH_TIMEOUT" "$((reserve_diffusers + 10))" "$f" "${args[@]}" "${bench_args[@]}" \
            >"$tmp/log" 2>&1
        rc=$(cat "$tmp/run.rc")
        took=$(cat "$tmp/run.secs")
        {
            echo "==== $name ($kind): rc $rc, ${took} s, args: ${args[*]} ${bench_args[*]:-}"
            clip "$tmp/log"
            echo
        } >>"$out/benches.log"
        if [[ $kind == criterion ]]; then
            # "group/function   time:   [low est high]", the name sometimes on the line before.
            awk -v bench="$name" '
                /time:/ {
                    line = $0
                    sub(/^[ \t]+/, "", line)
                    split(line, parts, /time:/)
                    id = parts[1]; gsub(/[ \t]+$/, "", id)
                    if (id == "") id = last
                    est = parts[2]; gsub(/[\[\]]/, "", est)
                    n = split(est, v, /[ \t]+/)
                    k = 0
                    for (i = 1; i <= n; i++) if (v[i] != "") w[++k] = v[i]
                    if (k >= 6) printf "%s\t%s\t%s %s\t%s %s .. %s %s\n", bench, id, w[3], w[4], w[1], w[2], w[5], w[6]
                    next
                }
                /^[^ \t]/ { last = $0; gsub(/[ \t]+$/, "", last) }
            ' "$tmp/log" >>"$bench_rows"
        fi
        printf '%s\t%s\t%s\t%s\n' "$name" "$kind" "$rc" "$took" >>"$tmp/bench_runs.tsv"
        if [[ $kind == plain ]]; then
            cp "$tmp/log" "$tmp/plain-$name.log"
        fi
    done <"$here/benches.tsv"
    if ((ran == 0)); then
        bench_note="no bench binary matched BENCH_FILTER=$BENCH_FILTER (carried: ${available[*]:-none})"
    fi
fi
if [[ -n $bench_note ]]; then
    echo "$bench_note" >>"$out/benches.log"
fi

# ---------------------------------------------------------------------------- diffusers
: >"$out/diffusers.log"
diffusers_skip=""
if [[ $SKIP_DIFFUSERS == 1 ]]; then
    diffusers_skip="skipped (SKIP_DIFFUSERS=1)"
elif ((!torch_ok)); then
    diffusers_skip="$PYTHON cannot import torch"
elif [[ $cuda_for_torch != True && -z ${DIFFUSERS_ARGS:-} ]]; then
    diffusers_skip="torch sees no CUDA device (set DIFFUSERS_ARGS='--device cpu ...' to run it anyway)"
elif [[ ! -f $here/bench_diffusers_gpu.py ]]; then
    diffusers_skip="no bench_diffusers_gpu.py in $here"
fi
if [[ -n $diffusers_skip ]]; then
    "$PYTHON" -c 'import json, sys; print(json.dumps({"skipped": sys.argv[1]}))' "$diffusers_skip" \
        >"$out/diffusers.json" 2>/dev/null || echo "{\"skipped\": \"$diffusers_skip\"}" >"$out/diffusers.json"
    echo "$diffusers_skip" >"$out/diffusers.log"
else
    say "diffusers: bench_diffusers_gpu.py ${diffusers_args[*]}"
    limited "$DIFFUSERS_TIMEOUT" 5 env PYTHONUNBUFFERED=1 "$PYTHON" "$here/bench_diffusers_gpu.py" \
        "${diffusers_args[@]}" >"$tmp/diffusers.json" 2>"$out/diffusers.log"
    rc=$(cat "$tmp/run.rc")
    took=$(cat "$tmp/run.secs")
    echo "rc $rc, ${took} s" >>"$out/diffusers.log"
    if [[ $rc == 0 || $rc == 1 ]] && [[ -s $tmp/diffusers.json ]]; then
        tail -n 1 "$tmp/diffusers.json" >"$out/diffusers.json"
    else
        "$PYTHON" -c 'import json, sys; print(json.dumps({"error": "bench_diffusers_gpu.py failed", "rc": sys.argv[1], "stderr_tail": sys.argv[2]}))' \
            "$rc" "$(tail -n 5 "$out/diffusers.log")" >"$out/diffusers.json" 2>/dev/null ||
            echo "{\"error\": \"bench_diffusers_gpu.py failed\", \"rc\": \"$rc\"}" >"$out/diffusers.json"
    fi
fi

# ---------------------------------------------------------------------------- summary.md
total=$(($(date +%s) - start))
{
    echo "# GPU run, $(date -u +%Y-%m-%d) — commit $(cat "$here/COMMIT" 2>/dev/null || echo unknown)"
    echo
    if [[ $gpu_name == none* ]]; then
        echo "- device: $gpu_name"
    else
        echo "- device: $gpu_name, ${gpu_mem}, max SM clock ${gpu_clock}; driver $driver"
    fi
    echo "- host: $(uname -n), $(nproc) cores; $(ldd --version 2>&1 | head -n 1)"
    if ((torch_ok)); then
        echo "- $PYTHON: Python $(torch_field python | cut -d' ' -f1), torch $(torch_field torch) (CUDA $(torch_field torch_cuda)); sees a GPU: $cuda_for_torch"
    else
        echo "- $PYTHON: cannot import torch"
    fi
    if [[ -f $here/BUILT ]]; then
        echo "- built: $(tr '\n' ';' <"$here/BUILT" | sed 's/;$//; s/;/; /g')"
    else
        echo "- built: unknown (no BUILT file)"
    fi
    echo
    echo "## Tests"
    echo
    if [[ -s $tests_rows ]]; then
        echo "| binary | result | passed | failed | ignored | '$SKIP_LINE' | seconds |"
        echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
        awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7 }' "$tests_rows"
        awk -F'\t' '{ p += $3; f += $4; i += $5; s += $6; t += $7; if ($2 != "ok") bad++ }
            END { printf "\nTotal: %d passed, %d failed, %d ignored, %d GPU skips, %.1f s; %d binaries not ok.\n", p, f, i, s, t, bad }' \
            "$tests_rows"
        if [[ -s $failed_names ]]; then
            echo
            echo "Failed tests:"
            echo
            head -n 50 "$failed_names" | sed 's/^/- /'
        fi
    else
        head -n 3 "$out/tests.log"
    fi
    echo
    echo "## Hardware probe"
    echo
    shopt -s nullglob
    probe_files=("$FREELUNCH_PROBE_OUT"/*.json)
    shopt -u nullglob
    if ((${#probe_files[@]})); then
        for f in "${probe_files[@]}"; do
            case $f in
                "$out"/*) shown="\`${f#"$out"/}\` in this report's folder" ;;
                *) shown="\`$f\`" ;;
            esac
            echo "- record: $shown ($(du -k "$f" | cut -f1) KiB); commit it as \`bench/gpu/probe/h200.json\` (bench/gpu/README.md)"
        done
    else
        echo "- no record in $FREELUNCH_PROBE_OUT (the hardware_probe binary did not run, or found no GPU)"
    fi
    # Its verdict, the approximations' errors, the NaN bits it saw and the first disagreements,
    # from its log.
    awk '/^==== hardware_probe:/ { on = 1; next } /^==== / { on = 0 }
        on && /hardware_probe: |NaN results:| ulp |differs from|beyond the ISA|did not run|not written/ {
            print "    " $0 }' "$out/tests.log" | head -n 60
    echo
    echo "## Benches"
    echo
    if [[ -n $bench_note ]]; then
        echo "$bench_note"
    fi
    if [[ -f $tmp/bench_runs.tsv ]]; then
        echo "| bench binary | kind | rc | seconds |"
        echo "| --- | --- | --- | ---: |"
        awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$tmp/bench_runs.tsv"
    fi
    if [[ -s $bench_rows ]]; then
        echo
        echo "| bench | id | estimate | interval |"
        echo "| --- | --- | ---: | --- |"
        awk -F'\t' '{ printf "| %s | %s | %s | %s |\n", $1, $2, $3, $4 }' "$bench_rows"
    fi
    # Plain benches print their own tables: their last 40 lines.
    for f in "$tmp"/plain-*.log; do
        [[ -f $f ]] || continue
        name=${f##*/plain-}
        echo
        echo "### ${name%.log}"
        echo
        tail -n 40 "$f"
    done
    echo
    echo "## diffusers (SD1.5 U-Net, one forward)"
    echo
    "$PYTHON" - "$out/diffusers.json" <<'EOF' 2>/dev/null || { echo '```'; cat "$out/diffusers.json"; echo '```'; }
import json, sys
r = json.load(open(sys.argv[1]))
if "skipped" in r or "error" in r:
    print(r.get("skipped") or "failed: %s (rc %s)" % (r["error"], r.get("rc")))
    sys.exit(0)
print("torch %s, diffusers %s, %s; batch %s, latents %s×%s, 77 tokens; median of %s after %s warm-ups; %s"
      % (r["torch"], r["diffusers"], r["device"], r["batch"], r["size"], r["size"], r["iters"],
         r["warmup"], r["attn_processor"]))
print()
print("| variant | median ms | min ms |")
print("| --- | ---: | ---: |")
names = {"fp16_ms": "fp16", "fp16_freeu_ms": "fp16 + FreeU (0.9, 0.2, 1.5, 1.6)",
         "fp32_ms": "fp32 (TF32 matmul %s, cuDNN %s)" % (r["tf32"]["matmul"], r["tf32"]["cudnn"]),
         "fp32_strict_ms": "fp32, TF32 off"}
for k, label in names.items():
    if r.get(k) is not None:
        print("| %s | %.2f | %.2f |" % (label, r[k], r["min_ms"].get(k, float("nan"))))
if r.get("freeu_overhead_pct") is not None:
    print()
    print("FreeU costs %+.1f%% on the fp16 forward." % r["freeu_overhead_pct"])
for k, e in r.get("errors", {}).items():
    print("- %s: %s" % (k, e))
EOF
    echo
    echo "## Run"
    echo
    echo "Total wall time: ${total} s (budget ${BUDGET_S} s)."
    if ((tests_failed)); then
        echo "Result: FAILED (a test binary failed, crashed, timed out or did not run)."
    else
        echo "Result: ok."
    fi
} >"$out/summary.md"

cat "$out/summary.md"
say "report in $out"
exit "$tests_failed"
