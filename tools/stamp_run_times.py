"""Write each lesson's measured run time into its first cell, from the course runner's output.

    OMP_NUM_THREADS=1 make course          > native.log     # this CPU's precision
    OMP_NUM_THREADS=1 make course-portable > portable.log   # as a CPU without bf16 runs it
    .venv/bin/python tools/stamp_run_times.py native.log portable.log

The line that starts with ``**Run time:**`` in each lesson's first (markdown) cell becomes one
line: the two measured times and the CPU they came from, nothing else. Only that line of the
source changes, so a notebook executed in place keeps its outputs.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROW = re.compile(r"^(\d\d_\w+)\s+([\d.]+)\s+(\w+)\s+(\d+)\s*$")


def read_log(path: Path) -> tuple[str, dict[str, tuple[float, str]]]:
    """(machine line, {lesson stem: (seconds, precision)}) from one course run's output."""
    machine, times = "", {}
    for line in Path(path).read_text().splitlines():
        if line.startswith("machine: "):
            machine = line[len("machine: "):].split(",")[0]
        m = ROW.match(line)
        if m:
            times[m.group(1)] = (float(m.group(2)), m.group(3))
    if not times:
        raise SystemExit(f"{path}: no lesson table found (is it the output of `make course`?)")
    return machine, times


def run_time_line(native: tuple[float, str], portable: tuple[float, str] | None, machine: str) -> str:
    line = (f"**Run time:** about {round(native[0]):d} s on a 2-core {machine} CPU with one torch thread "
            f"({native[1]})")
    if portable:
        line += f"; {round(portable[0]):d} s as a CPU without bf16 runs it ({portable[1]}, AVX2)"
    return line + ". Measured by the course runner (`make course`); not measured on a GPU."


def stamp(nb_path: Path, line: str) -> bool:
    nb = json.loads(nb_path.read_text())
    cell = nb["cells"][0]
    src = "".join(cell["source"])
    new = re.sub(r"^\*\*Run time:\*\*.*?(?=\n\n|\Z)", line, src, count=1, flags=re.S | re.M)
    if new == src:
        return False
    cell["source"] = [x + "\n" for x in new.split("\n")[:-1]] + [new.split("\n")[-1]]
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return True


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("native", type=Path)
    p.add_argument("portable", type=Path, nargs="?")
    args = p.parse_args()
    machine, native = read_log(args.native)
    portable = read_log(args.portable)[1] if args.portable else {}
    for stem, t in sorted(native.items()):
        path = ROOT / "notebooks" / f"{stem}.ipynb"
        changed = stamp(path, run_time_line(t, portable.get(stem), machine))
        print(f"{stem}: {'stamped' if changed else 'unchanged'}")


if __name__ == "__main__":
    main()
