"""Inference speed on this machine, side by side in one run: NeMo 3.0.0 vs our eager modules vs the inference form.

For QuartzNet 15x5 and 5x3, NeMo builds the model (random weights, randomised BatchNorm) and
saves it as .nemo (bench/nemo_side.py, in NeMo's own venv); we import that file and time, on the
same synthetic audio and thread count:

* NeMo ``EncDecCTCModel.forward`` (front end + encoder + decoder),
* our eager ``SpeechRecognizer.forward`` (the reference, NeMo's operations in NeMo's order),
* the inference form (model.inference) at fp32, bf16 (where the CPU has it) and int8,
* ONNX Runtime on the exported fp32 graph, fed by our front end.

Every row is front end + network; greedy decoding is left out because NeMo's forward has none
(`asr bench` times the service's path, decoding included). Parity: the imported model's
log-probs against NeMo's on a real clip (fp32 form and ONNX Runtime).

    python bench/inference_bench.py [--nemo-python /work/nemo-venv/bin/python] [--threads 2] [--runs 7] [--rounds 3]

Writes bench/results/inference_<date>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SPEECH = (REPO / "../shared/speech").resolve()
PARITY_CLIP = SPEECH / "samples/librispeech/1089-134691-0000.flac"
CALIBRATION_CLIP = SPEECH / "samples/librispeech/1089-134686-0001.flac"
CASES = {"1x10s": (1, 10.0), "8x10s": (8, 10.0), "1x60s": (1, 60.0)}

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cli.bench import cpu_model, synthetic_batch  # noqa: E402
from cli.timing import timed  # noqa: E402
from interop.nemo import import_nemo, nemo_jasper_blocks  # noqa: E402
from model.inference import for_inference  # noqa: E402
from model.precision import cpu_has_native_bf16  # noqa: E402
from model.presets import preset_config  # noqa: E402


def nemo_side(python: str, preset: str, audio_npz: Path, out: Path, threads: int, runs: int) -> dict:
    blocks = out / f"{preset}.blocks.json"
    blocks.write_text(json.dumps(nemo_jasper_blocks(preset_config(preset))))
    command = [python, str(REPO / "bench" / "nemo_side.py"), "--blocks", str(blocks), "--audio", str(audio_npz),
               "--clip", str(PARITY_CLIP), "--calibration-clip", str(CALIBRATION_CLIP), "--out", str(out),
               "--name", preset, "--threads", str(threads), "--runs", str(runs)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600,
                          env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    if done.returncode != 0:
        raise SystemExit(f"nemo_side.py failed for {preset}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def batch_tensors(clips: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.stack(clips)), torch.full((len(clips),), len(clips[0]), dtype=torch.int64)


def our_forms(model, onnx_path: Path) -> tuple[dict, object]:
    """The eager model, its inference forms at each precision this CPU runs, and an ONNX Runtime session."""
    import onnxruntime as ort

    forms = {"eager": model}
    forms["fp32"] = for_inference(model, "fp32")
    if cpu_has_native_bf16():
        forms["bf16"] = for_inference(model, "bf16")
    forms["int8"] = for_inference(model, "int8")
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    return forms, session


def our_rows(forms: dict, session, batches: dict, runs: int) -> dict:
    """Seconds of each of ``runs`` calls per case and form (front end + network), ONNX Runtime included."""
    featurizer = forms["fp32"].featurizer

    def onnx_runtime(audio, lengths):
        features, feature_lengths = featurizer(audio, lengths)
        return session.run(None, {"audio_signal": features.numpy(), "length": feature_lengths.numpy()})

    rows = {}
    with torch.inference_mode():
        for case, (audio, lengths) in batches.items():
            rows[case] = {}
            for name, form in forms.items():
                times = timed(lambda: form(audio, lengths), runs)
                rows[case][name] = {"median_s": statistics.median(times), "times_s": times}
            times = timed(lambda: onnx_runtime(audio, lengths), runs)
            rows[case]["onnxruntime"] = {"median_s": statistics.median(times), "times_s": times}
    return rows


def pool_times(rows: dict, more: dict) -> None:
    """Adds ``more``'s times to ``rows`` (nested dicts ending in {"median_s", "times_s"}) and re-takes the medians."""
    for key, row in rows.items():
        if "times_s" in row:
            row["times_s"] = row["times_s"] + more[key]["times_s"]
            row["median_s"] = statistics.median(row["times_s"])
        else:
            pool_times(row, more[key])


def parity(forms: dict, session, nemo_npy: Path) -> dict:
    """Each form's distance from NeMo's log-probs on a real clip: the largest absolute difference, the
    largest where NeMo's log-prob is above -20 (what decoders look at), and the largest relative one;
    and every float32 run's distance (NeMo's included) from float64 arithmetic on the same weights,
    which says how far float32 can pin these log-probs down at all."""
    from model.audio import decode_audio

    want = np.load(nemo_npy)
    clip = decode_audio(PARITY_CLIP, 16_000).samples
    outputs = {name: forms[name].log_probs_batch([clip])[0] for name in ("eager", "fp32")}
    with torch.inference_mode():
        features, lengths = forms["fp32"].featurizer(torch.from_numpy(clip)[None], torch.tensor([len(clip)]))
    got, got_lengths = session.run(None, {"audio_signal": features.numpy(), "length": lengths.numpy()})
    outputs["onnxruntime"] = got[0, :int(got_lengths[0])]
    with torch.inference_mode():
        exact, exact_lengths = copy.deepcopy(forms["eager"].network).double()(features.double(), lengths)
    exact = exact[0, :int(exact_lengths[0])].numpy()
    likely = want > -20
    out = {"nemo_min_logprob": float(want.min()),
           "nemo_vs_float64_max_abs": float(np.abs(want - exact).max())}
    for name, lp in outputs.items():
        diff = np.abs(lp - want)
        out[name] = {"max_abs": float(diff.max()), "max_abs_where_above_-20": float(diff[likely].max()),
                     "max_rel": float((diff / np.maximum(np.abs(want), 1e-6)).max()),
                     "vs_float64_max_abs": float(np.abs(lp - exact).max())}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nemo-python", default="/work/nemo-venv/bin/python")
    parser.add_argument("--presets", nargs="+", default=["quartznet_15x5", "quartznet_5x3"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=1,
                        help="alternate NeMo's timings and ours this many times (runs each), pooling the times: "
                             "on a machine whose speed drifts, the ratios then compare the same minutes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from interop.onnx import export_onnx

    clips = {case: synthetic_batch(n, seconds, 16_000, seed=i) for i, (case, (n, seconds)) in enumerate(CASES.items())}
    batches = {case: batch_tensors(c) for case, c in clips.items()}
    report = {"benchmark": "inference_bench", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "threads": args.threads,
                          "torch": torch.__version__, "load_average_start": os.getloadavg()},
              "runs": args.runs, "rounds": args.rounds,
              "cases": {c: {"batch": n, "clip_s": s} for c, (n, s) in CASES.items()},
              "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        audio_npz = tmp / "audio.npz"
        np.savez(audio_npz, **{case: np.stack(c) for case, c in clips.items()})
        for preset in args.presets:
            nemo = nemo_side(args.nemo_python, preset, audio_npz, tmp, args.threads, args.runs)
            model, _ = import_nemo(nemo["nemo_file"])
            onnx_path = tmp / f"{preset}.onnx"
            export_onnx(model, onnx_path)
            forms, session = our_forms(model, onnx_path)
            rows = our_rows(forms, session, batches, args.runs)
            for _ in range(args.rounds - 1):
                pool_times(nemo["cases"], nemo_side(args.nemo_python, preset, audio_npz, tmp, args.threads,
                                                    args.runs)["cases"])
                pool_times(rows, our_rows(forms, session, batches, args.runs))
            entry = {"nemo": {k: v for k, v in nemo.items() if k not in ("cases", "nemo_file", "parity_npy")},
                     "parity_max_abs_vs_nemo": parity(forms, session, Path(nemo["parity_npy"])), "cases": {}}
            for case, (n, seconds) in CASES.items():
                audio_s = n * seconds
                case_rows = {"nemo": {"median_s": nemo["cases"][case]["median_s"],
                                      "times_s": nemo["cases"][case]["times_s"]}, **rows[case]}
                for row in case_rows.values():
                    row["x_realtime"] = round(audio_s / row["median_s"], 1)
                    row["vs_nemo"] = round(case_rows["nemo"]["median_s"] / row["median_s"], 2)
                entry["cases"][case] = case_rows
            report["models"][preset] = entry
    report["machine"]["load_average_end"] = os.getloadavg()
    out = args.out or REPO / "bench" / "results" / f"inference_{datetime.now():%Y-%m-%d}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    print(f"\nwrote {out}")
    return 0


def markdown(report: dict) -> str:
    lines = []
    for preset, entry in report["models"].items():
        names = list(next(iter(entry["cases"].values())))
        lines += [f"\n{preset} (x real time, and speed-up over NeMo), {report['machine']['threads']} threads; "
                  f"parity vs NeMo: {entry['parity_max_abs_vs_nemo']}",
                  "| | " + " | ".join(entry["cases"]) + " |", "|---" * (len(entry["cases"]) + 1) + "|"]
        for name in names:
            cells = [f"{entry['cases'][c][name]['x_realtime']} ({entry['cases'][c][name]['vs_nemo']}x)"
                     for c in entry["cases"]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
