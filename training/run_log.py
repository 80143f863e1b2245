"""The run's log: console lines, a JSON-lines metrics file and TensorBoard scalars."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any


class TrainLogger:
    """Console lines, a JSON-lines metrics log and TensorBoard scalars (rank 0 only)."""

    def __init__(self, output_dir: Path, enabled: bool) -> None:
        self.enabled = enabled
        self.writer = None
        if not enabled:
            return
        output_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(output_dir / "metrics.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(output_dir / "tensorboard"))
        except ImportError:  # tensorboard is optional at run time; the JSON log is always written
            self.writer = None

    def _write(self, kind: str, values: dict[str, Any]) -> None:
        self.jsonl.write(json.dumps({"kind": kind, "time": time.time(), **values}) + "\n")
        self.jsonl.flush()
        if self.writer is not None:
            step = int(values.get("step", values.get("epoch", 0)))
            for key, value in values.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch") and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def step(self, **values: Any) -> None:
        if not self.enabled:
            return
        print("[train] epoch {epoch} step {step} loss {loss:.3f} lr {lr:.2e} {utterances_per_s:.1f} utt/s "
              "{audio_s_per_s:.1f} audio-s/s".format(**values), flush=True)
        self._write("step", values)

    def epoch(self, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        val = ""
        if "val_wer" in metrics:
            val = f" val WER {metrics['val_wer'] * 100:.2f}% CER {metrics['val_cer'] * 100:.2f}%"
        if "val_wer_average" in metrics:
            val += f" (average of {metrics['averaged_epochs']} epochs: WER {metrics['val_wer_average'] * 100:.2f}%)"
        print(f"[train] epoch {metrics['epoch']} done in {metrics['epoch_time_s']:.0f}s "
              f"({metrics['audio_s_per_s']:.1f} audio-s/s) loss {metrics['train_loss']:.3f}{val}"
              + (f" skipped {metrics['skipped_unreadable']} unreadable" if metrics["skipped_unreadable"] else ""),
              flush=True)
        self._write("epoch", metrics)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.writer is not None:
                self.writer.close()
