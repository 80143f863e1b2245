"""Loss and WER curves from a run's metrics.jsonl, drawn to a PNG."""

from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(metrics_path: Path, png_path: Path) -> Path:
    """Plots train loss (per logged step) and validation WER/CER (per epoch)."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    steps, losses, epochs, wers, cers = [], [], [], [], []
    for line in Path(metrics_path).read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "step":
            steps.append(row["step"])
            losses.append(row["loss"])
        elif row.get("kind") == "epoch" and "val_wer" in row:
            epochs.append(row["epoch"])
            wers.append(row["val_wer"] * 100)
            cers.append(row["val_cer"] * 100)
    fig, (ax_loss, ax_wer) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(steps, losses, lw=1)
    ax_loss.set(xlabel="optimizer step", ylabel="CTC loss (per utterance)", yscale="log", title="training loss")
    ax_wer.plot(epochs, wers, marker=".", label="WER")
    ax_wer.plot(epochs, cers, marker=".", label="CER")
    ax_wer.set(xlabel="epoch", ylabel="%", title="validation (held-out training speakers)", ylim=(0, 100))
    ax_wer.legend()
    fig.tight_layout()
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return png_path
