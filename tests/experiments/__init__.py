"""A package, so that tests/experiments/test_playground.py (the experiment) and tests/test_playground.py (the kit and
its widget) can share a basename: pytest imports each test file by basename in a folder without `__init__.py`."""
