#!/usr/bin/env bash
# Builds what a GPU run needs into gpu-bundle/ (git-ignored): the release test binaries, the bench
# binaries and the `freelunch` binary, stripped of debug info, plus the runner and the diffusers
# benchmark. The GPU machine has no Rust toolchain and no network, so everything is built here.
#
#   tools/gpu_bundle.sh [--with-diffusers] [--no-compress]
#
# --with-diffusers  also carry the diffusers wheel (pinned below) for bench_diffusers_gpu.py.
# --no-compress     leave the binaries as files rather than in bins.tar.xz (~56 MiB rather than
#                   ~7: too large to travel with the repo, for looking at here).
#
# Layout (tests/, benches/ and bin/ are packed into gpu-bundle/bins.tar.xz, which run.sh unpacks
# into a temporary folder; the binaries share most of their code, so xz -9 packs ~56 MiB into ~7):
#   tests/<name>                test binaries (`<name>` is the test target; the library's and the
#                               binary's unit tests are `freelunch-lib` and `freelunch-bin`)
#   benches/<name>              bench binaries; gpu-bundle/benches.tsv says which use criterion
#   bin/freelunch               the CLI (the tests spawn it through FREELUNCH_BIN)
#   gpu-bundle/run.sh           tools/gpu_run.sh
#   gpu-bundle/bench_diffusers_gpu.py
#   gpu-bundle/wheels/*.whl     with --with-diffusers
#   gpu-bundle/COMMIT, BUILT    what was built, and with what
#
# Then, in the device tool: run with carry ["gpu-bundle"] and command `bash gpu-bundle/run.sh`
# (see bench/gpu/README.md).
set -euo pipefail

# The diffusers wheel, as tools/requirements.txt pins it. Its other needs (huggingface_hub>=1.32,
# safetensors>=0.8, requests, filelock, numpy, regex, Pillow, packaging) are in the GPU machine's
# PyTorch environment; importlib_metadata is imported only on Python < 3.8. More wheels, if ever
# needed: EXTRA_WHEELS="name==version ...". Keep one version of each name.
WHEELS=(diffusers==0.42.1)
# Warn above this (MiB): the repo (~20 MiB) and the bundle travel together, 64 MiB at most.
WARN_MIB=40
TRAVEL_LIMIT_MIB=64

with_diffusers=0
compress=1
for arg in "$@"; do
    case "$arg" in
        --with-diffusers) with_diffusers=1 ;;
        --no-compress) compress=0 ;;
        -h | --help)
            sed -n '2,27p' "$0"
            exit 0
            ;;
        *)
            echo "gpu_bundle.sh: unknown argument '$arg' (try --help)" >&2
            exit 2
            ;;
    esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bundle=$root/gpu-bundle
start=$SECONDS

# Reads cargo's JSON messages on stdin; prints "name<TAB>path<TAB>src_path" for each executable of
# the wanted kind ("test": every test harness binary; "bench": bench targets; "bin": binaries).
artifacts() {
    python3 -c '
import json, sys
want = sys.argv[1]
for line in sys.stdin:
    line = line.strip()
    if not line.startswith("{"):
        continue
    msg = json.loads(line)
    if msg.get("reason") != "compiler-artifact" or not msg.get("executable"):
        continue
    target, test = msg["target"], msg["profile"]["test"]
    kind = target["kind"][0]
    if want == "test" and test:
        name = target["name"] + ("-" + kind if kind in ("lib", "bin") else "")
    elif want == "bench" and kind == "bench":
        name = target["name"]
    elif want == "bin" and kind == "bin" and not test:
        name = target["name"]
    else:
        continue
    print(name, msg["executable"], target["src_path"], sep="\t")
' "$1"
}

# Copies `path` to `dest` and strips its debug info there (the symbols stay, for backtraces).
put() {
    local path=$1 dest=$2
    if [[ -e $dest ]]; then
        echo "gpu_bundle.sh: two executables would be $dest" >&2
        exit 1
    fi
    cp "$path" "$dest"
    chmod 755 "$dest"
    strip --strip-debug "$dest"
}

rm -rf "$bundle"
mkdir -p "$bundle/tests" "$bundle/benches" "$bundle/bin"

# The test build also builds the binaries the integration tests spawn; that `freelunch` is taken
# (a plain `cargo build --release` would rebuild the dependencies without the dev-dependencies'
# features).
echo "== cargo test --release --no-run" >&2
cargo test --release --no-run --message-format=json >"$bundle/cargo-test.json"
artifacts test <"$bundle/cargo-test.json" >"$bundle/tests.tsv"
artifacts bin <"$bundle/cargo-test.json" >"$bundle/bins.list"
rm "$bundle/cargo-test.json"
echo "== cargo bench --no-run" >&2
cargo bench --no-run --message-format=json | artifacts bench >"$bundle/benches.list"

while IFS=$'\t' read -r name path _; do
    put "$path" "$bundle/tests/$name"
done <"$bundle/tests.tsv"
rm "$bundle/tests.tsv"

# benches.tsv: name<TAB>criterion|plain (a plain one is a `harness = false` main of its own).
: >"$bundle/benches.tsv"
while IFS=$'\t' read -r name path src; do
    put "$path" "$bundle/benches/$name"
    kind=plain
    if grep -q 'criterion_main!' "$src"; then
        kind=criterion
    fi
    printf '%s\t%s\n' "$name" "$kind" >>"$bundle/benches.tsv"
done <"$bundle/benches.list"
rm "$bundle/benches.list"

while IFS=$'\t' read -r name path _; do
    put "$path" "$bundle/bin/$name"
done <"$bundle/bins.list"
rm "$bundle/bins.list"
if [[ ! -x $bundle/bin/freelunch ]]; then
    echo "gpu_bundle.sh: no freelunch binary was built" >&2
    exit 1
fi
# The PTX executor's libraries: the emu_* tests run the CUDA backend on it there too (run.sh
# points FREELUNCH_EMU_DIR at bin/).
echo "== cargo build --release -p freelunch-emu-cuda -p freelunch-emu-cufft" >&2
cargo build --release -p freelunch-emu-cuda -p freelunch-emu-cufft >&2
for lib in libfreelunch_emu_cuda.so libfreelunch_emu_cufft.so; do
    put "target/release/$lib" "$bundle/bin/$lib"
done

cp tools/gpu_run.sh "$bundle/run.sh"
cp tools/bench_diffusers_gpu.py "$bundle/bench_diffusers_gpu.py"

commit=$(git rev-parse HEAD)
if [[ -n $(git status --porcelain) ]]; then
    commit+=-dirty
fi
echo "$commit" >"$bundle/COMMIT"

# The newest glibc symbol version the binaries need: the GPU machine's glibc must be at least that.
glibc=$(for f in "$bundle"/tests/* "$bundle"/benches/* "$bundle"/bin/*; do
    objdump -T "$f" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' || true
done | sort -u -V | tail -n 1)
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "rustc: $(rustc -V)"
    echo "cargo: $(cargo -V)"
    echo "host: $(rustc -vV | sed -n 's/^host: //p')"
    echo "needs: ${glibc:-unknown}"
    echo "built on: $(uname -n), $(nproc) cores"
} >"$bundle/BUILT"

raw_bytes=$(du -sb "$bundle/tests" "$bundle/benches" "$bundle/bin" | awk '{ s += $1 } END { print s }')
(cd "$bundle" && du -b tests/* benches/* bin/* | sort -k2 |
    awk '{ printf "  %7.1f MiB  %s\n", $1 / 1048576, $2 }') >&2
if ((compress)); then
    echo "== bins.tar.xz" >&2
    # One xz stream with a 64 MiB dictionary, so that code shared between binaries packs once.
    tar -C "$bundle" -cf - tests benches bin | xz -9 -T1 >"$bundle/bins.tar.xz"
    rm -rf "${bundle:?}/tests" "${bundle:?}/benches" "${bundle:?}/bin"
fi

if ((with_diffusers)); then
    echo "== wheels" >&2
    cache=$root/.cache/gpu-wheels
    mkdir -p "$cache" "$bundle/wheels"
    shopt -s nocaseglob
    read -r -a extra <<<"${EXTRA_WHEELS:-}"
    for spec in "${WHEELS[@]}" "${extra[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            -d "$cache" "$spec"
        # Wheel names spell the project in lower case with underscores.
        name=${spec%%==*}
        name=${name,,}
        name=${name//[-.]/_}
        whl=("$cache/$name-${spec#*==}-"*.whl)
        if [[ ! -f ${whl[0]} ]]; then
            echo "gpu_bundle.sh: no wheel for $spec in $cache" >&2
            exit 1
        fi
        cp "${whl[@]}" "$bundle/wheels/"
    done
fi

# Sizes: the bundle, and everything that travels (tracked and untracked-not-ignored files + it).
mib() { awk '{ printf "%.1f", $1 / 1048576 }'; }
bundle_bytes=$(du -sb "$bundle" | cut -f1)
tree_bytes=$(git ls-files -z -c -o --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null |
    awk '{ s += $1 } END { print s + 0 }')
total_bytes=$((bundle_bytes + tree_bytes))
echo >&2
(cd "$bundle" && du -b -- * | sort -k2 | awk '{ printf "  %7.1f MiB  %s\n", $1 / 1048576, $2 }') >&2
echo "binaries: $(mib <<<"$raw_bytes") MiB stripped; gpu-bundle: $(mib <<<"$bundle_bytes") MiB; with the working tree: $(mib <<<"$total_bytes") MiB" \
    "(limit $TRAVEL_LIMIT_MIB); commit $commit; built in $((SECONDS - start)) s" >&2
if ((total_bytes > TRAVEL_LIMIT_MIB * 1048576)); then
    echo "gpu_bundle.sh: too large to travel (over $TRAVEL_LIMIT_MIB MiB)" >&2
    exit 1
elif ((bundle_bytes > WARN_MIB * 1048576)); then
    echo "gpu_bundle.sh: warning: the bundle is over $WARN_MIB MiB" >&2
fi
