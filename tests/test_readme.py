"""Every command of the README's ``bash`` blocks runs as written, in order, in a fresh folder:
``.venv/bin/python`` is this interpreter, step counts are cut to 2 (the decoder stage to 1),
the autoencoder of latent diffusion to 2 updates,
``--n`` to 2, the shapes pairs of the diffusion, prior and noisy-clip commands to 300, ``PATH``
is the shipped sample folder and ``data/`` the repository's. ``sh`` blocks are not run (``make``
targets that CI runs itself, multi-GPU lines)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBSTITUTIONS = [(r"--steps \d+", "--steps 2"), (r"--decoder-steps \d+", "--decoder-steps 1"),
                 (r"--ae-steps \d+", "--ae-steps 2"),
                 (r"--n \d+", "--n 2"), (r"folder:PATH\b", f"folder:{ROOT / 'data' / 'sample_folder'}"),
                 (r"(?<= )data/", f"{ROOT / 'data'}/")]  # run as from the repository's root


DRAWS_SHAPES = {"diffusion", "prior", "noisy-clip"}  # training commands whose shapes data --n-train cuts


def readme_commands(text: str) -> list[str]:
    """The commands of the ``bash`` blocks: continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#\s.*$", "", line).strip()  # a trailing "  # comment"
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_the_parser_finds_the_training_commands():
    commands = readme_commands((ROOT / "README.md").read_text())
    assert len(commands) >= 6
    assert all(c.startswith(".venv/bin/python ") for c in commands), commands


def test_every_readme_command_works(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", DALLE_HEADLESS="1")
    for command in readme_commands((ROOT / "README.md").read_text()):
        for pattern, value in SUBSTITUTIONS:
            command = re.sub(pattern, value, command)
        argv = shlex.split(command)
        argv[0] = sys.executable
        if set(argv) & DRAWS_SHAPES and "--n-train" not in argv:  # they draw 20,000 shapes pairs by default
            argv += ["--n-train", "300"]
        proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    assert (tmp_path / "grid.png").is_file() and (tmp_path / "runs" / "dalle" / "prior.pt").is_file()
