"""The run report: one self-contained HTML page from what a training run wrote."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from dalle_mini_impl.__main__ import main
from dalle_mini_impl.training.report import gain_verdict, read_run, summary_lines, write_report


def fake_dalle_run(tmp_path, gains=(0.0, 0.4, 1.7)):
    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)
    rows = [{"step": 10 * (i + 1), "loss": 5.0 - i, "text_loss": 3.0 - i, "image_loss": 5.2 - i, "lr": 1e-3,
             "val_loss": 5.1 - i, "val_image_loss": 5.3 - i, "conditioning_gain": g} for i, g in enumerate(gains)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "prior.pt").write_bytes(b"")
    for step, colour in ((10, 0), (30, 255)):
        Image.fromarray(np.full((8, 16, 3), colour, np.uint8)).save(run / "samples" / f"step_{step:06d}.png")
    return run


def test_the_report_is_one_page_with_curves_grids_and_the_gain(tmp_path):
    run = fake_dalle_run(tmp_path)
    out = write_report(run)
    page = out.read_text()
    assert out == run / "report.html"
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 3       # curves + first and last grid
    assert "step_000010.png" in page and "step_000030.png" in page
    assert "conditioning gain 1.700" in page and "listens to the caption" in page
    assert "<script" not in page and "http" not in page                     # nothing runs, nothing loads


def test_the_gain_verdict_follows_the_number():
    assert gain_verdict(0.0) == "does not use the caption yet"
    assert gain_verdict(0.2) == "uses the caption a little"
    assert gain_verdict(2.96) == "listens to the caption"


def test_a_run_without_gain_says_so(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 3.0, "image_loss": 3.2}) + "\n")
    lines = summary_lines(read_run(run))
    assert any("no conditioning gain logged" in line for line in lines), lines


def test_a_line_cut_short_by_a_crash_is_skipped_but_an_edited_one_is_an_error(tmp_path):
    run = fake_dalle_run(tmp_path)
    log = run / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 40, "lo')                       # the last line, cut
    assert len(read_run(run)["rows"]) == 3
    log.write_text('{"step": oops}\n' + log.read_text())
    with pytest.raises(ValueError, match="line 1"):
        read_run(run)


def test_the_command_writes_the_page_and_refuses_bad_input(tmp_path, capsys):
    run = fake_dalle_run(tmp_path)
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    assert (tmp_path / "r.html").is_file()
    assert "conditioning gain 1.700" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "missing")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    assert "no metrics.jsonl" in capsys.readouterr().err
    assert main(["report", str(run), "--out", str(tmp_path / "r.png")]) == 2
    assert "HTML" in capsys.readouterr().err
