"""Test order for `make test`'s two xdist workers (``--dist loadscope`` hands whole modules out in
collection order): the longest modules first, so that no long one starts last and leaves the other
worker idle (the README's commands, about two minutes of subprocesses, then the lessons, longest
first, then the unit tests). The order changes which worker runs what, never what is run."""
from __future__ import annotations

LONGEST_FIRST = ["tests/test_readme.py", "notebooks/03_", "notebooks/08_", "notebooks/11_", "notebooks/10_",
                 "notebooks/01_", "notebooks/02_", "notebooks/12_", "notebooks/04_", "notebooks/09_",
                 "tests/test_train_dalle.py", "notebooks/"]


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        path = item.nodeid.split("::")[0]
        return next((i for i, p in enumerate(LONGEST_FIRST) if path.startswith(p)), len(LONGEST_FIRST))
    items.sort(key=rank)  # stable: each module keeps its own order
