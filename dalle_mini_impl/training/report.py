"""A run's report: one self-contained HTML page a user opens after training.

    python -m dalle_mini_impl report runs/dalle            # writes runs/dalle/report.html

It reads only what a training command wrote into its run directory (``metrics.jsonl``,
``metrics.json``, ``config.json``, ``samples/``, ``recons/``) and draws:

* the loss curves, training and validation, against the step;
* for a DALL-E prior, the **conditioning gain** (paper section 2.2's model should use the
  caption: validation image-token loss after a shuffled caption minus after the image's own,
  nats per token; :func:`dalle_mini_impl.dalle.validation_losses`) and a one-line verdict;
* for a dVAE, the held-out hard-token MSE and the codebook usage (perplexity, dead codes);
* the first and the latest sample grids (captions under their samples) or reconstruction
  grids (real above, reconstruction below).

Figures are embedded as PNG (base64), so the page needs no other file and opens the same on a
laptop, in Colab (``IPython.display.HTML(open(path).read())``) or from an e-mail. The page
holds no script: it is text and pictures.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path

# What the conditioning gain says, in nats per image token. A prior that ignores the text
# gains exactly 0; the 12-step run of lesson 08 gains 0.000, the lesson's 600-step learner run
# about 2, the shipped shapes system 2.96.
GAIN_WORDS = ((0.05, "does not use the caption yet"), (0.5, "uses the caption a little"),
              (math.inf, "listens to the caption"))

PANELS = {  # kind -> [(panel title, y label, [(metric key, label)], log scale)]
    "dalle": [("loss", "nats / token", [("loss", "train loss"), ("text_loss", "train text CE"),
                                         ("image_loss", "train image CE"), ("val_loss", "validation loss"),
                                         ("val_image_loss", "validation image CE")], False),
              ("conditioning gain", "nats / image token", [("conditioning_gain", "validation: shuffled - own caption")], False),
              ("learning rate", "lr", [("lr", "lr")], False)],
    "dvae": [("reconstruction", "MSE per pixel", [("mse", "train (relaxed)"), ("val_hard_mse", "held out, hard tokens")], True),
             ("codebook usage", "perplexity (codes in use)", [("val_perplexity", "held out")], False),
             ("dead codes", "codes never chosen", [("val_dead_codes", "held out")], False),
             ("loss", "loss (negative ELB per dim)", [("loss", "train")], False)],
    "clip": [("loss", "contrastive loss", [("loss", "train")], False)],
}


def read_run(run: str | Path) -> dict:
    """Everything the report needs from a run directory; a clear error when it is not one."""
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run} is not a directory: give the --out directory of a training run "
                                "(e.g. runs/dalle)")
    log = run / "metrics.jsonl"
    if not log.is_file():
        raise FileNotFoundError(f"{run} has no metrics.jsonl: give the --out directory of a training run "
                                "(python -m dalle_mini_impl.training dvae|dalle|clip ... --out DIR)")
    rows, lines = [], log.read_text().splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # the last line cut short by a crash: report what came before it
            if n < len(lines):
                raise ValueError(f"{log}, line {n}, is not JSON: was the file edited by hand?") from None
    final = _read_json(run / "metrics.json")
    config = _read_json(run / "config.json")
    return {"run": run, "rows": rows, "final": final, "config": config, "kind": run_kind(run, rows, config)}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError:
        return {}


def run_kind(run: Path, rows: list[dict], config: dict) -> str:
    """dalle, dvae, clip or other, from the files and the logged keys."""
    keys = set().union(*rows) if rows else set()
    if (run / "prior.pt").exists() or "image_loss" in keys:
        return "dalle"
    if "recon_nll" in keys or "tau" in keys or (run / "recons").is_dir():
        return "dvae"
    if (run / "clip.pt").exists():
        return "clip"
    return "other"


def gain_verdict(gain: float) -> str:
    for bound, words in GAIN_WORDS:
        if gain < bound:
            return words
    return GAIN_WORDS[-1][1]


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r
           and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _panels(kind: str, rows: list[dict]) -> list:
    if kind in PANELS:
        return PANELS[kind]
    numeric = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and k != "step"})
    return [(k, k, [(k, k)], False) for k in numeric[:6]]


def curves_png(kind: str, rows: list[dict]) -> bytes | None:
    """The run's curves, one panel per quantity, as PNG bytes (None: nothing to plot)."""
    from matplotlib.figure import Figure  # no pyplot: no backend switched, nothing left open

    panels = [p for p in _panels(kind, rows) if any(_series(rows, k)[0] for k, _ in p[2])]
    if not panels:
        return None
    cols = 2 if len(panels) > 1 else 1
    nrows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(6.5 * cols, 3.6 * nrows))
    axes = fig.subplots(nrows, cols, squeeze=False)
    styles = ["o-", "s--", "^-.", "d:", "v-"]
    for ax, (title, ylabel, keys, log_y) in zip(axes.flat, panels):
        for (key, label), style in zip(keys, styles):
            x, y = _series(rows, key)
            if x:
                ax.plot(x, y, style, ms=3, lw=1.2, label=label)
        if title == "conditioning gain":
            ax.axhline(0, color="grey", lw=0.8, ls=":")
        if log_y and all(v > 0 for k, _ in keys for v in _series(rows, k)[1]):
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _step_of(path: Path) -> int:
    m = re.search(r"(\d+)", path.stem)
    return int(m.group(1)) if m else -1


def grid_files(run: Path) -> list[Path]:
    """The first and the latest grid of samples/ and of recons/ (the ones the run wrote)."""
    out = []
    for sub in ("samples", "recons"):
        files = sorted((run / sub).glob("*.png"), key=_step_of) if (run / sub).is_dir() else []
        out += files[:1] + files[-1:] if len(files) > 1 else files
    return out


def _img(data: bytes, alt: str) -> str:
    return (f'<img alt="{html.escape(alt)}" style="max-width:100%" '
            f'src="data:image/png;base64,{base64.b64encode(data).decode()}">')


def summary_lines(info: dict) -> list[str]:
    """The report's headline, in words, from the last logged values."""
    rows, kind = info["rows"], info["kind"]
    lines = []
    if not rows:
        return ["The run logged nothing yet (no line in metrics.jsonl)."]
    last = rows[-1]
    lines.append(f"{kind} run, {len(rows)} log lines, last step {last.get('step', '?')}"
                 + (f", precision {last['precision']}" if "precision" in last else ""))
    for key in ("loss", "val_loss", "image_loss", "val_image_loss", "val_hard_mse", "val_perplexity", "val_dead_codes"):
        x, y = _series(rows, key)
        if y:
            lines.append(f"{key}: {y[0]:.4g} at step {x[0]} -> {y[-1]:.4g} at step {x[-1]}")
    if kind == "dalle":
        x, y = _series(rows, "conditioning_gain")
        if y:
            lines.append(f"conditioning gain {y[-1]:.3f} nats per image token at step {x[-1]}: the model "
                         f"{gain_verdict(y[-1])} (0 means it ignores the text)")
        else:
            lines.append("no conditioning gain logged (a run without validation pairs, or made before "
                         "the gain was logged)")
    return lines


def write_report(run: str | Path, out: str | Path | None = None) -> Path:
    """Write RUN/report.html (or ``out``) and return its path."""
    return report_page(read_run(run), out)


def report_page(info: dict, out: str | Path | None = None) -> Path:
    """Write the page for a run already read by :func:`read_run`; return its path."""
    run = info["run"]
    out = Path(out) if out else run / "report.html"
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out {out}: the report is an HTML page; give a name ending in .html")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>report: {html.escape(run.name)}</title>"
             "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "td,th{padding:2px 10px;text-align:left}code{background:#f3f3f3}</style></head><body>",
             f"<h1>Training run <code>{html.escape(str(run))}</code></h1>", "<ul>"]
    parts += [f"<li>{html.escape(s)}</li>" for s in summary_lines(info)]
    parts.append("</ul>")
    command = (info["config"].get("extra") or {}).get("command") or info["final"].get("command")
    if command:
        parts.append(f"<p>Command: <code>{html.escape(str(command))}</code></p>")
    png = curves_png(info["kind"], info["rows"])
    if png:
        parts += ["<h2>Curves</h2>", _img(png, "training curves")]
    grids = grid_files(run)
    if grids:
        parts.append("<h2>Grids</h2>")
        for g in grids:
            what = ("samples: each column a caption, written under its samples (the real image above, on "
                    "your own data)" if g.parent.name == "samples"
                    else "held-out images (top) and their hard-token reconstructions (bottom)")
            parts += [f"<h3>{html.escape(g.parent.name)}/{html.escape(g.name)}</h3><p>{what}</p>",
                      _img(g.read_bytes(), g.name)]
    final = {k: v for k, v in info["final"].items() if isinstance(v, (int, float, str)) and k != "command"}
    if final:
        parts.append("<h2>Final metrics (metrics.json)</h2><table>")
        parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(f'{v:.4g}' if isinstance(v, float) else str(v))}</td></tr>"
                  for k, v in final.items()]
        parts.append("</table>")
    parts.append("</body></html>")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("\n".join(parts))
    tmp.replace(out)
    return out
