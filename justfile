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

# slow tests: embedded-model generation and every notebook through papermill
test-slow *ARGS:
    {{py}} -m pytest -q -m slow "$@"

# every notebook through papermill on its quick preset
smoke:
    {{py}} -m pytest -q -m slow tests/test_notebooks.py

# JupyterLab on nbs/ (notebooks paired with their .py through jupytext)
lab:
    {{py}} -m jupyter lab --notebook-dir=nbs $( [ "$(id -u)" = 0 ] && echo --allow-root )

# execute one notebook: ./just run contrastive_steering layer=12 scale=4 [--force]
run NB *ARGS:
    {{py}} -m lib.runner run "$@"

# grid sweep, resumable: ./just sweep contrastive_steering layer=6,10,14 scale=1,2,4
sweep NB *ARGS:
    {{py}} -m lib.runner sweep "$@"

# check parameters without running
check NB *ARGS:
    {{py}} -m lib.runner check "$@"

# benchmarks -> out/bench/ (steering overhead; BO vs random search on a known optimum; Ray executor vs local)
bench:
    {{py}} benchmarks/steering.py
    {{py}} benchmarks/optimize.py
    {{py}} benchmarks/ray_executor.py
    {{just_executable()}} --justfile {{justfile()}} bench-peers

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

# llama.cpp's llama-completion, built once from PyPI's llama-cpp-python sdist into ~/.cache/steerlab (10-30 min)
build-llamacpp:
    nice -n 5 peers/build_llamacpp.sh

# llama.cpp vs our hooks with an exported control vector on the embedded default: prints the agreement figures
serve-check *ARGS: build-llamacpp
    {{py}} peers/serve_check.py "$@"

# parity with steering-vectors/repeng and llama.cpp agreement (builds .venv-peers and llama.cpp on first use)
test-peers *ARGS: peers-env build-llamacpp
    {{py}} -m pytest -q -m "peers or llamacpp" tests/test_peers.py tests/test_llamacpp.py "$@"

# sync .ipynb pairs from the .py sources
sync:
    {{py}} -m jupytext --sync nbs/*.py
