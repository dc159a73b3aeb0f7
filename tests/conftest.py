"""Shared test helpers."""
import os
import signal

import pytest


@pytest.fixture
def sigint_after():
    """``sigint_after(fn, n)``: ``fn`` that sends this process SIGINT right after its n-th call
    returns (the worst moment for a training step: the optimizer has just stepped)."""
    def wrap(fn, n):
        calls = {"n": 0}

        def wrapped(*args, **kwargs):
            out = fn(*args, **kwargs)
            calls["n"] += 1
            if calls["n"] == n:
                os.kill(os.getpid(), signal.SIGINT)
            return out
        return wrapped
    return wrap
