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

# benchmarks -> out/bench/ (steering overhead; BO vs random search on a known optimum)
bench:
    {{py}} benchmarks/steering.py
    {{py}} benchmarks/optimize.py

# sync .ipynb pairs from the .py sources
sync:
    {{py}} -m jupytext --sync nbs/*.py
