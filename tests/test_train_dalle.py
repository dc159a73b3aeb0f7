"""``python -m dalle_mini_impl.training dalle`` (training/dalle.py): resume == uninterrupted,
torchrun == one process, FSDP == DDP, micro-batches == one pass, clear errors. Tiny sizes."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dalle_mini_impl.dalle import DALLE
from dalle_mini_impl.datasets import load_pairs
from dalle_mini_impl.dvae import DiscreteVAE, DVAEConfig
from dalle_mini_impl.precision import Precision
from dalle_mini_impl.training import dalle as training_dalle
from dalle_mini_impl.training.__main__ import main
from dalle_mini_impl.training.dalle import DalleSettings, make_optimizer, micro_batches, train_dalle
from dalle_mini_impl.training.distributed import batch_indices
from dalle_mini_impl.transformer import Transformer, TransformerConfig

ROOT = Path(__file__).resolve().parent.parent
CAPTIONS = ["a small red circle on the left", "a large blue square at the top"]
torch.set_num_threads(1)


def tiny_dvae(seed: int = 0) -> DiscreteVAE:
    torch.manual_seed(seed)
    return DiscreteVAE(DVAEConfig.toy(image_size=16, grid=4, n_codes=32, n_hid=8, codebook_dim=8)).eval()


def _train_args(tmp_path, dvae_path, out, *extra):
    return ["dalle", "--dvae", str(dvae_path), "--dataset", "shapes", "--n-train", "64",
            "--batch-size", "8", "--d-model", "32", "--n-layers", "2", "--n-heads", "2",
            "--text-len", "12", "--steps", "6", "--log-every", "1", "--ckpt-every", "2",
            "--threads", "1", "--no-progress", "--precision", "fp32", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def dvae_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dvae") / "dvae.pt"
    tiny_dvae().save(path)
    return path


def _with_dataset(args, spec):
    args = list(args)
    args[args.index("--dataset") + 1] = spec
    return args


def _final_weights(out):
    return torch.load(Path(out) / "resume.pt", weights_only=True)["model"]


@pytest.mark.parametrize("augment", [(), ("--shift", "1", "--caption-dropout", "0.25")], ids=["plain", "augmented"])
def test_resume_after_interrupt_equals_uninterrupted_run(tmp_path, dvae_file, monkeypatch, sigint_after, augment):
    full = tmp_path / "full"
    main(_train_args(tmp_path, dvae_file, full, "--ema", "0.9", *augment))
    # the same run, sent Ctrl-C at the worst moment: right after the optimizer step of update 4.
    # The step finishes, resume.pt is saved labelled 4 holding exactly 4 updates, and it exits 130
    part = tmp_path / "part"
    real_step = Precision.step
    monkeypatch.setattr(Precision, "step", sigint_after(real_step, 4))
    with pytest.raises(SystemExit) as exc:
        main(_train_args(tmp_path, dvae_file, part, "--ema", "0.9", *augment))
    assert exc.value.code == 130
    assert torch.load(part / "resume.pt", weights_only=True)["step"] == 4
    monkeypatch.setattr(Precision, "step", real_step)
    main(_train_args(tmp_path, dvae_file, part, "--ema", "0.9", "--resume", *augment))
    a, b = _final_weights(full), _final_weights(part)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    ema_a = torch.load(full / "resume.pt", weights_only=True)["extra"]["ema"]
    ema_b = torch.load(part / "resume.pt", weights_only=True)["extra"]["ema"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # the logged losses of the resumed steps are the uninterrupted run's, each step once
    la = [json.loads(l)["loss"] for l in (full / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l)["loss"] for l in (part / "metrics.jsonl").read_text().splitlines()]
    assert la == lb
    # and the saved system loads and samples
    m = DALLE.load(full)
    assert m.generate(CAPTIONS[:1], n=1, seed=0).shape == (1, 3, 16, 16)


def test_an_exception_inside_a_step_keeps_the_last_checkpoint(tmp_path, dvae_file, monkeypatch):
    """A KeyboardInterrupt raised inside a step (a second Ctrl-C) leaves resume.pt at the last
    checkpoint instead of saving a half-done step."""
    calls = {"n": 0}
    real_loss = training_dalle.dalle_loss

    def flaky_loss(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real_loss(*a, **k)

    monkeypatch.setattr(training_dalle, "dalle_loss", flaky_loss)
    with pytest.raises(SystemExit):
        main(_train_args(tmp_path, dvae_file, tmp_path / "p"))  # --ckpt-every 2
    assert torch.load(tmp_path / "p" / "resume.pt", weights_only=True)["step"] == 2


def test_resume_refuses_a_different_run_and_allows_harmless_changes(tmp_path, dvae_file, capsys):
    out = tmp_path / "r"
    main(_train_args(tmp_path, dvae_file, out, "--stop-after", "2"))
    with pytest.raises(ValueError, match=r"--lr: None in resume.pt, 0.01 now; --seed: 0 in resume.pt, 1 now"):
        main(_train_args(tmp_path, dvae_file, out, "--resume", "--seed", "1", "--lr", "0.01"))
    with pytest.raises(ValueError, match="--d-model: 32 in resume.pt, 48 now"):
        main([a if a != "32" else "48" for a in _train_args(tmp_path, dvae_file, out, "--resume")])
    with pytest.raises(ValueError, match="training data"):
        main(_with_dataset(_train_args(tmp_path, dvae_file, out, "--resume"), "digits"))
    main(_train_args(tmp_path, dvae_file, out, "--resume", "--log-every", "2", "--steps", "8"))
    text = capsys.readouterr().out
    assert "--log-every 1 -> 2" in text and "the run is extended" in text
    assert json.loads((out / "metrics.json").read_text())["step"] == 8


def test_token_cache_follows_the_files(tmp_path, dvae_file):
    """Editing a caption or repainting an image rebuilds the token cache, and --resume refuses
    the changed data."""
    folder = tmp_path / "data"
    shutil.copytree(ROOT / "data" / "sample_folder", folder)
    args = _with_dataset(_train_args(tmp_path, dvae_file, tmp_path / "o", "--steps", "2", "--batch-size", "2",
                                     "--stop-after", "1"), f"folder:{folder}")
    main(args)
    key = torch.load(tmp_path / "o" / "tokens.pt", weights_only=True)["key"]
    caption = sorted(folder.glob("*.txt"))[0]
    caption.write_text("a completely different caption\n")
    with pytest.raises(ValueError, match="training data"):
        main(args + ["--resume"])
    main(args)  # a fresh run on the new data: the cache is rebuilt
    assert torch.load(tmp_path / "o" / "tokens.pt", weights_only=True)["key"]["data"] != key["data"]


def test_nonfinite_updates_never_reach_the_weights(tmp_path, dvae_file):
    """A learning rate that makes the loss NaN: every such update is skipped (the weights stay
    finite), the run stops with a message after --max-nonfinite in a row, and what is on disk
    is finite."""
    out = tmp_path / "nan"
    with pytest.raises(SystemExit, match="inf or NaN"):
        main(_train_args(tmp_path, dvae_file, out, "--lr", "1e12", "--max-nonfinite", "2", "--steps", "20",
                         "--warmup", "1"))
    state = torch.load(out / "resume.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert log[-1]["skipped"] >= 1


@pytest.mark.parametrize("flag,value", [("--steps", "0"), ("--steps", "-5"), ("--batch-size", "0"),
                                        ("--stop-after", "0"), ("--clip", "-1"), ("--ema", "1.5"),
                                        ("--ckpt-every", "0"), ("--log-every", "0"), ("--lr", "nan")])
def test_bad_flags_are_refused_before_any_work(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as exc:
        main(["dalle", "--out", str(tmp_path), flag, value])
    assert exc.value.code == 2
    assert flag in capsys.readouterr().err


def test_user_errors_are_one_line_with_status_2(tmp_path, capsys):
    from dalle_mini_impl.training.__main__ import cli
    assert cli(["dalle", "--dvae", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no dVAE checkpoint") and err.count("\n") == 1


def test_torchrun_two_processes_match_one_process(tmp_path, dvae_file):
    one = tmp_path / "one"
    main(_train_args(tmp_path, dvae_file, one, "--steps", "4"))
    two = tmp_path / "two"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "dalle_mini_impl.training", *_train_args(tmp_path, dvae_file, two, "--steps", "4")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    l1 = [json.loads(l) for l in (one / "metrics.jsonl").read_text().splitlines()]
    l2 = [json.loads(l) for l in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(l1) == len(l2) == 4
    # rank 0 logs its half-batch loss; the average over ranks is the global one, and the
    # weights after DDP's averaged gradients must match the single process's
    w1, w2 = _final_weights(one), _final_weights(two)
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-4, atol=1e-5)
    assert json.loads((two / "metrics.json").read_text())["world_size"] == 2


def test_bad_dataset_paths_give_clear_errors(tmp_path, dvae_file):
    with pytest.raises(ValueError, match="does not exist"):
        main(_with_dataset(_train_args(tmp_path, dvae_file, tmp_path / "o"), "folder:/no/such/folder"))
    with pytest.raises(ValueError, match="needs a path"):
        load_pairs("folder:", None, 16, 0)
    with pytest.raises(ValueError, match="unknown dataset"):
        load_pairs("imagenet", None, 16, 0)
    with pytest.raises(FileNotFoundError, match="no dVAE checkpoint"):
        main(["dalle", "--dvae", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")])


def test_folder_dataset_trains(tmp_path, dvae_file):
    out = tmp_path / "f"
    args = _train_args(tmp_path, dvae_file, out, "--steps", "2", "--batch-size", "2")
    res = main(_with_dataset(args, "folder:" + str(ROOT / "data" / "sample_folder")))
    assert res == 0 and (out / "prior.pt").is_file()
    assert DALLE.load(out).tokenizer.bpe_vocab_size <= 512  # the cpu preset's BPE vocabulary
    from PIL import Image
    with Image.open(out / "samples" / "step_000002.png") as im:  # real image above the sample, caption below
        assert im.height > 2 * 4 * 16 and im.width > 4 * 16


def test_paper_preset_prints_instead_of_training(capsys):
    main(["dalle", "--preset", "paper"])
    text = capsys.readouterr().out
    assert "parameters: 12," in text and "GiB" in text


def test_make_optimizer_groups_and_steps():
    model = Transformer(TransformerConfig(d_model=32, n_layers=1, n_heads=2))
    opt = make_optimizer(model, 1e-3, 0.1, "cpu")
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert opt.defaults["betas"] == (0.9, 0.96)


def test_micro_batches_accumulate_the_same_step(tmp_path):
    """--micro-batch 8 over a batch of 16 gives the loss and the update of one pass of 16."""
    assert micro_batches(16, None) == [slice(0, 16)]
    assert micro_batches(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    common = ["dalle", "--steps", "2", "--n-train", "64", "--batch-size", "16", "--d-model", "32",
              "--n-layers", "1", "--n-heads", "2", "--no-progress", "--log-every", "1", "--precision", "fp32",
              "--threads", "1"]
    logs = []
    for extra, out in (([], "whole"), (["--micro-batch", "8"], "pieces")):
        main(common + ["--out", str(tmp_path / out)] + extra)
        logs.append([json.loads(line) for line in (tmp_path / out / "metrics.jsonl").read_text().splitlines()])
    for a, b in zip(*logs):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)


def test_fsdp_outside_torchrun_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="torchrun"):
        main(["dalle", "--steps", "1", "--n-train", "64", "--batch-size", "16", "--d-model", "32",
              "--n-layers", "1", "--n-heads", "2", "--no-progress", "--fsdp", "--out", str(tmp_path)])


def test_fsdp_matches_ddp_and_resumes_exactly(tmp_path):
    """FSDP2 (--fsdp) on 2 CPU processes (gloo) trains what DDP trains, and a run stopped
    and resumed under FSDP ends with the uninterrupted run's weights."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    args = ["--steps", "4", "--n-train", "128", "--batch-size", "16", "--micro-batch", "4",
            "--d-model", "32", "--n-layers", "2", "--n-heads", "2", "--no-progress", "--log-every", "1",
            "--threads", "1", "--ckpt-every", "2"]

    def torchrun(out, *extra):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "dalle_mini_impl.training", "dalle", *args, "--out", str(tmp_path / out), *extra]
        proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return torch.load(tmp_path / out / "resume.pt", weights_only=True)

    ddp = torchrun("ddp")
    torchrun("fsdp", "--fsdp", "--stop-after", "2")
    fsdp = torchrun("fsdp", "--fsdp", "--resume")
    assert ddp["step"] == fsdp["step"] == 4
    for k, v in ddp["model"].items():  # bf16 autocast: the two reduce in different orders
        torch.testing.assert_close(fsdp["model"][k], v, atol=2e-3, rtol=1e-2)
    assert DALLE.load(tmp_path / "fsdp").prior.config.n_layers == 2  # the gathered, plain model


def test_settings_dataclass_is_what_the_command_builds(tmp_path, dvae_file):
    """The command line and the dataclass are one interface: the same settings, the same run."""
    from dalle_mini_impl.training.__main__ import build_parser
    args = build_parser().parse_args(_train_args(tmp_path, dvae_file, tmp_path / "a", "--steps", "2"))
    settings = DalleSettings.from_args(args)
    assert settings.steps == 2 and settings.d_model == 32 and settings.precision == "fp32"
    a = train_dalle(settings)
    b = train_dalle(DalleSettings(**{**settings.__dict__, "out": str(tmp_path / "b")}))
    assert a["loss"] == b["loss"]


def test_batch_indices_depend_on_seed_and_step_only():
    a = batch_indices(100, 8, step=13, seed=3)
    assert torch.equal(a, batch_indices(100, 8, step=13, seed=3))
    assert not torch.equal(a, batch_indices(100, 8, step=14, seed=3))
    # two ranks of 4 take the global batch a single process of 8 would take (as a set)
    both = torch.cat([batch_indices(100, 4, 13, 3, world=2, rank=r) for r in (0, 1)])
    assert sorted(both.tolist()) == sorted(batch_indices(100, 8, 13, 3).tolist())
    with pytest.raises(ValueError, match="smaller --batch-size"):
        batch_indices(10, 8, 0, 0, world=2)


def test_old_entry_point_still_works_and_says_it_is_deprecated(tmp_path, dvae_file, capsys):
    from dalle_mini_impl import train
    assert train.main(_train_args(tmp_path, dvae_file, tmp_path / "old", "--steps", "1")) == 0
    assert "deprecated" in capsys.readouterr().err


def test_killed_runs_resume_to_the_uninterrupted_weights(tmp_path, dvae_file):
    """Fault injection: SIGKILL ``training dalle`` at random moments while it trains and
    checkpoints every step (8 kills; a kill may land inside a checkpoint write), resume each
    time; the final weights and the log equal the uninterrupted run's."""
    steps = 60
    full, part = tmp_path / "full", tmp_path / "killed"
    extra = ("--steps", str(steps), "--ckpt-every", "1")
    main(_train_args(tmp_path, dvae_file, full, *extra))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    rng = random.Random(0)
    kills = 0
    while not (part / "metrics.json").is_file():
        cmd = [sys.executable, "-m", "dalle_mini_impl.training", *_train_args(tmp_path, dvae_file, part, *extra)]
        if (part / "resume.pt").is_file():
            cmd.append("--resume")
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        log = part / "metrics.jsonl"
        if kills < 8:
            done = len(log.read_text().splitlines()) if log.is_file() else 0
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:  # until it has trained a few steps
                if log.is_file() and len(log.read_text().splitlines()) >= done + 2:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0, 0.05))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        _, err = proc.communicate(timeout=240)
        assert proc.returncode in (0, -signal.SIGKILL), err.decode()[-2000:]
    assert kills == 8
    a, b = _final_weights(full), _final_weights(part)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    la = [json.loads(line)["loss"] for line in (full / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(line)["loss"] for line in (part / "metrics.jsonl").read_text().splitlines()]
    assert la == lb and len(la) == steps
    assert not list(part.glob(".*.tmp"))  # no temp file left by a kill inside a write


# --------------------------------------------------------------------------- appendix D in training
PER_RESBLOCK = ("--precision", "fp16", "--grad-scaling", "per-resblock")


def test_per_resblock_scaling_trains_logs_its_scales_and_resumes_exactly(tmp_path, dvae_file):
    full, part = tmp_path / "full", tmp_path / "part"
    main(_train_args(tmp_path, dvae_file, full, *PER_RESBLOCK))
    log = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert len(log[-1]["log2_scales"]) == 2 and len(log[-1]["skipped_per_block"]) == 2  # one per resblock
    assert log[-1]["log2_scales"] != log[0]["log2_scales"]  # the scales move by appendix D's rule
    main(_train_args(tmp_path, dvae_file, part, *PER_RESBLOCK, "--stop-after", "3"))
    main(_train_args(tmp_path, dvae_file, part, *PER_RESBLOCK, "--resume"))
    a, b = _final_weights(full), _final_weights(part)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="add --precision fp16"):
        main(_train_args(tmp_path, dvae_file, tmp_path / "bf", "--grad-scaling", "per-resblock"))


def test_a_poisoned_resblock_changes_no_weight_and_lowers_only_its_scale():
    from dalle_mini_impl.precision import ResblockPrecision
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(text_vocab=40, image_vocab=16, text_len=4, image_grid=2,
                                          d_model=16, n_layers=3, n_heads=2))
    prec = ResblockPrecision("cpu", [[b.attn_branch, b.mlp_branch] for b in model.blocks])
    opt = make_optimizer(model, 1e-2, 0.0)
    text, image = torch.randint(0, 40, (2, 4)), torch.randint(0, 16, (2, 4))
    def make_inf(module, args, out):  # the gradient reaching block 1's MLP branch overflows
        out.register_hook(lambda g: g * float("inf"))

    poison = model.blocks[1].mlp_branch.register_forward_hook(make_inf)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scales = list(prec.grad_scaler.log2_scales)
    t, i = model(text, image)
    prec.backward(t.float().mean() + i.float().mean())
    prec.unscale(opt)
    assert not prec.step(opt)  # skipped
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    after = prec.grad_scaler.log2_scales
    assert after[1] < scales[1] and after[0] >= scales[0] and after[2] >= scales[2]
    assert prec.grad_scaler.skipped_per_block == [0, 1, 0]
    poison.remove()
    t, i = model(text, image)  # the next, healthy step applies
    prec.backward(t.float().mean() + i.float().mean())
    prec.unscale(opt)
    assert prec.step(opt)
    assert not all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_per_resblock_scaling_trains_like_float32(tmp_path, dvae_file):
    """The final loss of an emulated-fp16 run with per-resblock scales lies within the spread of
    three float32 runs that differ only in their seed (widened by that spread)."""
    def final(seed, *extra):
        out = tmp_path / f"s{seed}{'_'.join(extra)}"
        main(_train_args(tmp_path, dvae_file, out, "--steps", "12", "--seed", str(seed), *extra))
        return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    fp32 = [final(seed) for seed in (0, 1, 2)]
    spread = max(fp32) - min(fp32)
    ours = final(0, *PER_RESBLOCK)
    assert min(fp32) - spread <= ours <= max(fp32) + spread, (ours, fp32)


# --------------------------------------------------------------------------- augmentation
def test_shift_augmentation_tokenises_every_translation_and_draws_one_per_pair(tmp_path, dvae_file):
    from dalle_mini_impl.training.dalle import pick_shifts, shifted, shifts
    img = torch.zeros(1, 3, 16, 16)
    img[..., 5, 7] = 1.0
    img[..., 0, :] = 0.5  # an edge row: the uncovered border repeats it
    down_left = shifted(img, 1, -1)
    assert down_left[0, 0, 6, 6] == 1.0 and down_left.sum() > 0 and down_left.shape == img.shape
    assert torch.equal(down_left[..., 0, :], torch.full((1, 3, 16), 0.5))
    assert shifts(1)[4] == (0, 0) and len(shifts(2)) == 25
    main(_train_args(tmp_path, dvae_file, tmp_path / "s", "--steps", "2", "--shift", "1"))
    image = torch.load(tmp_path / "s" / "tokens.pt", weights_only=True)["image"]
    assert image.shape[1:] == (9, 16)  # 64 pairs x 9 translations x 4x4 tokens
    model = DALLE.load(tmp_path / "s")
    real, _ = load_pairs("shapes", 64, 16, 0)
    assert image.dtype == torch.int16 and torch.equal(image[:, 4].long(), model.encode_images(real).cpu())  # the middle one is the image itself
    assert not torch.equal(image[:, 0], image[:, 4])
    a, b = pick_shifts(image, 0, 5), pick_shifts(image, 0, 5)
    assert torch.equal(a, b) and not torch.equal(a, pick_shifts(image, 0, 6))  # a function of (seed, step)


def test_text_len_fits_the_captions_unless_given(tmp_path, dvae_file):
    from dalle_mini_impl.datasets import DigitsDataset
    from dalle_mini_impl.tokenizer import course_tokenizer
    from dalle_mini_impl.training.dalle import fitted_text_len
    tok = course_tokenizer(32)
    assert max(len(tok.tokens(c)) for c in DigitsDataset().captions) == 5
    assert fitted_text_len(tok, DigitsDataset().captions, 32) == 8      # 5 tokens + room -> 8, not 32
    assert fitted_text_len(tok, ["word " * 40], 32) == 32                # never more than the preset's
    args = [a for a in _train_args(tmp_path, dvae_file, tmp_path / "t", "--steps", "1") if a not in ("--text-len", "12")]
    main(args)
    assert DALLE.load(tmp_path / "t").text_len == 16  # one-object shapes captions: at most 10 tokens


# --------------------------------------------------------------------------- validation
def test_validation_split_is_disjoint_seeded_and_logged(tmp_path, dvae_file):
    from dalle_mini_impl.training.dalle import split_validation, val_size
    text, image = torch.arange(100)[:, None], torch.arange(100)[:, None] + 1000
    t1, i1, (vt, vi) = split_validation(text, image, None, seed=3)
    assert len(vt) == val_size(100, None) == 5 and len(t1) == 95
    assert not set(t1.flatten().tolist()) & set(vt.flatten().tolist())            # disjoint
    assert torch.equal(i1 - 1000, t1) and torch.equal(vi - 1000, vt)              # pairs stay pairs
    assert torch.equal(split_validation(text, image, None, seed=3)[2][0], vt)     # the same on resume
    assert split_validation(text[:30], image[:30], None, seed=3)[2] is None       # too few to spare
    main(_train_args(tmp_path, dvae_file, tmp_path / "v", "--steps", "2"))
    line = json.loads((tmp_path / "v" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"val_loss", "val_image_loss", "conditioning_gain"} <= set(line)


def test_conditioning_gain_is_zero_without_text_and_large_for_the_shipped_system():
    from dalle_mini_impl.dalle import validation_losses
    from dalle_mini_impl.datasets import ShapesDataset
    from dalle_mini_impl.utils import data_dir
    shipped = DALLE.load(data_dir() / "dalle_shapes_toy")
    scenes = ShapesDataset(128, seed=7, split="train", n_objects=1)
    text, image = shipped.encode_text(scenes.captions), shipped.encode_images(scenes.float_images())
    gain = validation_losses(shipped.prior, text, image)["conditioning_gain"]
    assert gain > 1.0, gain  # about 3 nats per image token: the shipped prior listens to the caption
    with torch.no_grad():
        shipped.prior.text_emb.weight.zero_()  # a prior that cannot tell one caption from another
    assert validation_losses(shipped.prior, text, image)["conditioning_gain"] == 0.0
