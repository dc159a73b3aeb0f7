"""The training command: `python -m dalle_mini_impl.training dvae ...` writes loadable
checkpoints, a JSONL log and final metrics, and --resume continues the run."""
import json
from pathlib import Path

import pytest
import torch

from dalle_mini_impl.training.__main__ import build_parser, main
from dalle_mini_impl.dvae import DiscreteVAE

TINY = ["--n-hid", "8", "--codebook-dim", "8", "--n-codes", "16", "--batch-size", "4",
        "--n-train", "32", "--n-eval", "8", "--log-every", "1", "--ckpt-every", "2", "--precision", "fp32",
        "--device", "cpu", "--preset", "cpu"]


def test_dvae_command_writes_checkpoint_log_and_metrics(tmp_path):
    out = tmp_path / "run"
    main(["dvae", "--dataset", "shapes", "--steps", "3", "--out", str(out), *TINY])
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2, 3]
    assert {"loss", "recon_nll", "kl", "tau", "beta", "mse", "images_per_s"} <= set(lines[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_codes"] == 16 and 1 <= metrics["perplexity"] <= 16 and metrics["hard_mse"] >= 0
    model = DiscreteVAE.load(out / "dvae.pt")
    assert model.config.n_codes == 16 and model.config.grid == 8
    assert model.encode(torch.rand(2, 3, 32, 32)).shape == (2, 8, 8)


def test_dvae_resume_continues_the_same_run(tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    main(["dvae", "--steps", "4", "--out", str(full), *TINY])
    main(["dvae", "--steps", "4", "--stop-after", "2", "--out", str(part), *TINY])
    assert not (part / "dvae.pt").exists() and (part / "resume.pt").exists()
    main(["dvae", "--steps", "4", "--out", str(part), "--resume", *TINY])
    a = torch.load(full / "dvae.pt", weights_only=True)["model"]
    b = torch.load(part / "dvae.pt", weights_only=True)["model"]
    for k in a:  # interrupted + resumed == uninterrupted, exactly
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(l)["step"] for l in (part / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_dvae_command_rejects_bad_input(tmp_path):
    with pytest.raises(SystemExit):
        main(["dvae", "--out", str(tmp_path), "--steps", "0"])  # at least one update
    assert build_parser().parse_args(["dvae"]).steps == 3000  # the shipped dVAE's, by default
    with pytest.raises(ValueError, match="unknown dataset"):
        main(["dvae", "--dataset", "nope", "--steps", "1", "--out", str(tmp_path), *TINY])


def test_decoder_stage_keeps_the_tokens_and_resumes_exactly(tmp_path):
    """--decoder-steps: the encoder (so every token id) stays as stage 1 left it, only the
    decoder and codebook move; a run stopped inside that stage resumes to the same weights."""
    one, two, part = tmp_path / "one", tmp_path / "two", tmp_path / "part"
    main(["dvae", "--steps", "3", "--out", str(one), *TINY])
    main(["dvae", "--steps", "3", "--decoder-steps", "3", "--out", str(two), *TINY])
    a = torch.load(one / "dvae.pt", weights_only=True)["model"]
    b = torch.load(two / "dvae.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    lines = [json.loads(l) for l in (two / "metrics.jsonl").read_text().splitlines()]
    assert [l.get("stage") for l in lines] == [None] * 3 + ["decoder"] * 3
    assert json.loads((two / "metrics.json").read_text())["decoder_steps"] == 3

    main(["dvae", "--steps", "3", "--decoder-steps", "3", "--stop-after", "4", "--out", str(part), *TINY])
    main(["dvae", "--steps", "3", "--decoder-steps", "3", "--resume", "--out", str(part), *TINY])
    c = torch.load(part / "dvae.pt", weights_only=True)["model"]
    for k in b:
        assert torch.equal(b[k], c[k]), k
    with pytest.raises(SystemExit) as exc:  # argparse: "error: argument --decoder-steps: must be ... >= 0"
        main(["dvae", "--steps", "1", "--decoder-steps", "-1", "--out", str(tmp_path / "bad"), *TINY])
    assert exc.value.code == 2


def test_folder_dataset_keeps_its_last_images_for_evaluation(tmp_path):
    """A folder has no held-out split: the command keeps its last images aside (never trained
    on) and evaluates on them; a folder too small to spare one image is refused clearly."""
    from dalle_mini_impl.datasets import load_images
    out = tmp_path / "run"
    main(["dvae", "--dataset", "folder:data/sample_folder", "--steps", "2", "--n-eval", "2",
                "--out", str(out), *TINY])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_eval"] == 1  # 6 images: a tenth, at least one, kept aside
    images = load_images("folder:data/sample_folder", None, "train", 32, 0)
    assert len(images) == 6
    small = tmp_path / "small"
    small.mkdir()
    for f in ("shape_00.png", "shape_00.txt"):
        (small / f).write_bytes((Path("data/sample_folder") / f).read_bytes())
    with pytest.raises(ValueError, match="too few to keep any aside"):
        main(["dvae", "--dataset", f"folder:{small}", "--steps", "1", "--out", str(tmp_path / "s"), *TINY])


def test_precision_flag_and_the_deprecated_bf16_alias(capsys):
    parser = build_parser()
    args = parser.parse_args(["dvae", "--steps", "1", "--out", "x"])
    assert args.precision is None                       # None: $DALLE_PRECISION, else auto
    assert parser.parse_args(["dvae", "--steps", "1", "--out", "x", "--precision", "bf16"]).precision == "bf16"
    assert parser.parse_args(["dvae", "--steps", "1", "--out", "x", "--no-bf16"]).precision == "fp32"
    assert "--no-bf16 is deprecated; use --precision fp32" in capsys.readouterr().err
    assert parser.parse_args(["dvae", "--steps", "1", "--out", "x", "--bf16"]).precision == "bf16"
    assert "--bf16 is deprecated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["dvae", "--steps", "1", "--out", "x", "--precision", "fp8"])


def test_ctrl_c_saves_at_a_step_boundary_and_resumes_exactly(tmp_path, monkeypatch, sigint_after):
    """SIGINT right after update 3 (the worst moment): the update finishes, resume.pt holds
    exactly 3 updates, the command exits 130, and --resume ends where the uninterrupted run did."""
    from dalle_mini_impl.training import dvae as training_dvae
    full, part = tmp_path / "full", tmp_path / "part"
    main(["dvae", "--steps", "5", "--out", str(full), *TINY])
    real = training_dvae.train_step
    monkeypatch.setattr(training_dvae, "train_step", sigint_after(real, 3))
    with pytest.raises(SystemExit) as exc:
        main(["dvae", "--steps", "5", "--out", str(part), *TINY])
    assert exc.value.code == 130
    assert torch.load(part / "resume.pt", weights_only=True)["step"] == 3
    monkeypatch.setattr(training_dvae, "train_step", real)
    main(["dvae", "--steps", "5", "--out", str(part), "--resume", *TINY])
    a = torch.load(full / "dvae.pt", weights_only=True)["model"]
    b = torch.load(part / "dvae.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_other_options_and_data(tmp_path):
    part = tmp_path / "p"
    main(["dvae", "--steps", "4", "--stop-after", "2", "--out", str(part), *TINY])
    with pytest.raises(ValueError, match="--beta: 6.6 in resume.pt, 1.0 now"):
        main(["dvae", "--steps", "4", "--resume", "--beta", "1", "--out", str(part), *TINY])
    with pytest.raises(ValueError, match="training images"):
        main(["dvae", "--steps", "4", "--resume", "--dataset", "digits", "--out", str(part), *TINY])


def test_the_shipped_models_are_not_overwritten_by_accident(tmp_path):
    from dalle_mini_impl.utils import data_dir
    with pytest.raises(ValueError, match="overwrite-shipped"):
        main(["dvae", "--steps", "1", "--out", str(data_dir() / "dvae_shapes_toy"), *TINY])


def test_a_run_writes_reconstruction_grids_and_codebook_health(tmp_path):
    out = tmp_path / "r"
    main(["dvae", "--steps", "4", "--out", str(out), *TINY])
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"val_hard_mse", "val_perplexity", "val_dead_codes"} <= set(lines[-1])
    assert sorted(p.name for p in (out / "recons").iterdir()) == ["step_000002.png", "step_000004.png"]
    from PIL import Image
    with Image.open(out / "recons" / "step_000004.png") as im:  # 8 real images above their reconstructions
        assert im.size == (4 * (8 * 32 + 9), 4 * (2 * 32 + 3))
