"""NeMo's half of bench/inference_bench.py; runs in NeMo's own venv (see tests/fixtures/make_nemo_fixtures.py).

Builds one EncDecCTCModel from an encoder block table with random weights and randomised
BatchNorm (the fixtures' recipe), saves it as .nemo, times ``model.forward`` on the given audio
batches, and writes its log-probs on one real clip, so that the project's import of the same
file can be timed and checked against it. Prints one JSON object.

    /work/nemo-venv/bin/python bench/nemo_side.py --blocks B.json --audio A.npz --clip C.flac --out DIR
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
from make_nemo_fixtures import calibrate_bn, randomise  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--blocks", required=True, help="JSON list of NeMo jasper block dicts")
    parser.add_argument("--audio", required=True, help=".npz of float32 (B, L) batches, one array per case")
    parser.add_argument("--clip", required=True, help="real 16 kHz clip for the parity log-probs")
    parser.add_argument("--calibration-clip", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()

    import nemo

    torch.set_num_threads(args.threads)
    model = build_nemo_model(args.blocks, args.seed)
    calibrate_bn(model, _read_abs(args.calibration_clip))
    randomise(model, torch.Generator().manual_seed(args.seed + 100))
    model = model.float().cpu().eval()
    out = Path(args.out)
    nemo_path = out / f"{args.name}.nemo"
    model.save_to(str(nemo_path))

    result = {"nemo_version": nemo.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
              "nemo_file": str(nemo_path), "num_parameters": sum(p.numel() for p in model.parameters()), "cases": {}}
    batches = np.load(args.audio)
    with torch.inference_mode():
        for case in batches.files:
            audio = torch.from_numpy(batches[case])
            lengths = torch.full((audio.shape[0],), audio.shape[1], dtype=torch.int64)
            times = timed(lambda: model.forward(input_signal=audio, input_signal_length=lengths), args.runs)
            result["cases"][case] = {"median_s": statistics.median(times), "times_s": times,
                                     "audio_s": audio.shape[0] * audio.shape[1] / 16_000}
        clip = _read_abs(args.clip)
        log_probs, lengths, _ = model.forward(input_signal=torch.from_numpy(clip)[None],
                                              input_signal_length=torch.tensor([len(clip)]))
        np.save(out / f"{args.name}__parity.npy", log_probs[0, :int(lengths[0])].numpy())
    result["parity_npy"] = str(out / f"{args.name}__parity.npy")
    print(json.dumps(result))
    return 0


def _read_abs(path: str) -> np.ndarray:
    import soundfile as sf

    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    assert rate == 16_000, (path, rate)
    return np.ascontiguousarray(audio[:, 0])


if __name__ == "__main__":
    sys.exit(main())
