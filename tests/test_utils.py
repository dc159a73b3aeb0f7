"""Seeding, device choice, atomic checkpoints."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from dalle_mini_impl import utils
from dalle_mini_impl.utils import (count_parameters, count_parameters_meta, get_device, load_checkpoint,
                                   save_checkpoint, seed_everything)


def test_seed_gives_same_numbers():
    seed_everything(3)
    a = torch.randn(5)
    seed_everything(3)
    assert torch.equal(a, torch.randn(5))
    with pytest.raises(TypeError):
        seed_everything("3")


def test_device_choice():
    assert get_device().type in ("cpu", "cuda", "mps")
    assert get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            get_device("cuda")


def test_meta_device_count_equals_the_real_count():
    def build():
        return torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.LayerNorm(5))
    assert count_parameters_meta(build) == count_parameters(build()) == 7 * 5 + 5 + 2 * 5


def _tiny():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    return model, opt


def test_checkpoint_round_trip_restores_everything(tmp_path):
    model, opt = _tiny()
    seed_everything(5)
    path = save_checkpoint(tmp_path / "ck.pt", model=model, optimizer=opt,
                           config={"d": 3}, step=17, extra={"note": "x"})
    expected_next = torch.rand(3)  # what the RNG draws right after saving
    model2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.1)
    state = load_checkpoint(path, model=model2, optimizer=opt2, restore_rng=True)
    assert state["step"] == 17 and state["config"] == {"d": 3} and state["extra"] == {"note": "x"}
    assert torch.equal(torch.rand(3), expected_next)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(p, q)
    assert opt2.state_dict()["state"][0]["exp_avg"].equal(opt.state_dict()["state"][0]["exp_avg"])
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temp files left


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"a": 1}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not written by"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_interrupted_write_keeps_old_file(tmp_path, monkeypatch):
    model, opt = _tiny()
    path = save_checkpoint(tmp_path / "ck.pt", model=model, step=1)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise KeyboardInterrupt  # Ctrl-C in the middle of the write

    monkeypatch.setattr(utils.os, "fsync", broken_fsync)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model=model, step=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


def test_killed_process_leaves_old_file(tmp_path):
    """A process killed (os._exit, as by SIGKILL) half-way through writing leaves the old
    checkpoint intact and loadable."""
    model, _ = _tiny()
    path = save_checkpoint(tmp_path / "ck.pt", model=model, step=1)
    before = path.read_bytes()
    code = textwrap.dedent(f"""
        import os, torch
        from dalle_mini_impl import utils
        real_write = os.fdopen
        def dying_fdopen(fd, mode):
            f = real_write(fd, mode)
            class Dying:
                def __enter__(self): return self
                def __exit__(self, *a): return False
                def write(self, data):
                    f.write(data[: len(data) // 2]); f.flush()
                    os._exit(137)  # killed mid-write
            return Dying()
        utils.os.fdopen = dying_fdopen
        utils.save_checkpoint({str(path)!r}, model=torch.nn.Linear(50, 50), step=2)
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=os.getcwd())
    assert proc.returncode == 137
    assert path.read_bytes() == before
    assert load_checkpoint(path)["step"] == 1


class _RunsCode:
    """Unpickling this runs ``touch MARKER``: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path, marker, **fields):
    torch.save({"format": "dalle_mini_impl.checkpoint/1", "config": {}, "step": 0, "model": {},
                "optimizer": None, "rng": None, "extra": {"x": _RunsCode(marker)}, **fields}, path)


def test_no_file_a_user_is_handed_can_run_code(tmp_path):
    """A pickle that would run a command, planted in each file the package loads: nothing runs,
    and each loader says why it refused."""
    import shutil

    from dalle_mini_impl.clip import load_clip
    from dalle_mini_impl.dalle import DALLE
    from dalle_mini_impl.dvae import DiscreteVAE
    from dalle_mini_impl.judge import load_judge
    from dalle_mini_impl.training.dalle import pretokenise

    marker = tmp_path / "ran"
    root = utils.data_dir()
    cases = {}
    for name in ("dvae.pt", "prior.pt"):  # a downloaded model folder with one hostile file
        folder = tmp_path / f"model_{name}"
        shutil.copytree(root / "dalle_shapes_toy", folder)
        _plant(folder / name, marker)
        cases[f"DALLE.load ({name})"] = lambda folder=folder: DALLE.load(folder)
    for name, loader in (("dvae", DiscreteVAE.load), ("clip", load_clip), ("judge", load_judge),
                         ("resume", lambda p: utils.load_checkpoint(p, restore_rng=True))):
        path = tmp_path / f"{name}.pt"
        _plant(path, marker)
        cases[name] = lambda loader=loader, path=path: loader(path)
    cache = tmp_path / "tokens.pt"
    torch.save({"key": _RunsCode(marker)}, cache)
    cases["tokens.pt"] = lambda: pretokenise(None, None, None, cache, {})
    for what, load in cases.items():
        with pytest.raises(ValueError, match="could run code"):
            load()
        assert not marker.exists(), f"{what} ran the planted command"


def test_stale_temp_files_go_at_the_next_save(tmp_path):
    target = tmp_path / "resume.pt"
    (tmp_path / ".resume.pt.abc123.tmp").write_bytes(b"x" * 100)  # left by a kill during a write
    save_checkpoint(target, model=torch.nn.Linear(2, 2), step=1)
    assert [p.name for p in tmp_path.iterdir()] == ["resume.pt"]


def test_nonfinite_weights_are_never_written(tmp_path):
    model = torch.nn.Linear(2, 2)
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="weight holds NaN"):
        save_checkpoint(tmp_path / "bad.pt", model=model)
    assert not (tmp_path / "bad.pt").exists()


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    import numpy as np
    seed_everything(5)
    save_checkpoint(tmp_path / "r.pt", model=torch.nn.Linear(2, 2))
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(9)
    utils.load_checkpoint(tmp_path / "r.pt", restore_rng=True)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a
