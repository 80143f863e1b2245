"""NeMo's half of bench/train_step_bench.py; runs in NeMo's own venv.

Builds QuartzNet from an encoder block table, then times training steps (forward in train mode,
CTC loss, backward, NeMo's Novograd step) on the given batch. Prints one JSON object.

    /work/nemo-venv/bin/python bench/nemo_train_side.py --blocks B.json --batch BATCH.npz
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from nemo_model import build_nemo_model  # noqa: E402 - bench/, the script's own folder

# Appended, not prepended: the checkout's packages must not shadow anything in NeMo's venv.
sys.path.append(str(Path(__file__).resolve().parents[1]))
from cli.timing import timed  # noqa: E402 - standard library only


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", required=True)
    parser.add_argument("--batch", required=True, help=".npz with audio (B, L), audio_lengths, targets, target_lengths")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    import nemo
    from nemo.core.optim.novograd import Novograd

    torch.set_num_threads(args.threads)
    model = build_nemo_model(args.blocks, args.seed).train()
    optimizer = Novograd(model.parameters(), lr=0.01, betas=(0.8, 0.5), weight_decay=0.001)
    data = np.load(args.batch)
    audio, audio_lengths = torch.from_numpy(data["audio"]), torch.from_numpy(data["audio_lengths"])
    targets, target_lengths = torch.from_numpy(data["targets"]), torch.from_numpy(data["target_lengths"])

    def step() -> float:
        log_probs, encoded_lengths, _ = model.forward(input_signal=audio, input_signal_length=audio_lengths)
        loss = model.loss(log_probs=log_probs, targets=targets, input_lengths=encoded_lengths,
                          target_lengths=target_lengths)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return float(loss)

    losses = []
    times = timed(lambda: losses.append(step()), args.steps, warmup=1)
    losses = losses[1:]  # the warm-up step's loss
    print(json.dumps({"nemo_version": nemo.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "median_s": statistics.median(times), "times_s": times, "losses": losses}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
