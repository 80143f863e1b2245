"""`asr transcribe-batch`: an archive transcribed on a Ray cluster with Ray Data, resumable.

The pipeline, streamed (Ray Data holds only what its operators' queues allow, not the archive):

1. read (CPU tasks, one file each): the file is read and cut into the service's windows at the model's
   rate (cli.windowed.read_file); a file that cannot be read becomes a failure row with its reason;
2. transcribe (an actor pool, ``--workers`` actors with ``--cpus-per-worker`` CPUs or ``--gpus-per-worker``
   GPUs each): the model's inference form, loaded once per actor, runs the windows of a batch of files
   in length-sorted batches and decodes each file a segment at a time (cli.windowed.transcribe_files, as
   `asr transcribe` does), and returns one record per file;
3. write (the driver): each record's files under ``--out``, atomically, the ``.json`` last
   (cli.archive_outputs); a rerun skips what has one.

How workers get the model: the driver reads the registry version's files (and the LM's, for beam
search) and puts them in Ray's object store once; each actor writes them to its own temporary folder
and loads them from there. So only the driver needs the registry, and every actor runs exactly the
version the driver resolved, even if the registry changes during the job. The input files must be
readable at the same paths on every node (a shared folder), as with any Ray Data job over files.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cli.archive_inputs import Item
from cli.archive_outputs import is_done, record, remove_partial_files, write_result, write_run_files

# Files per actor call: enough windows for several length-sorted batches, few enough that a batch of
# short files does not wait long for one long one.
FILES_PER_CALL = 32
# Seconds the actor pool may take to start (model files shipped, weights loaded, warmed) before the job fails.
ACTOR_START_TIMEOUT_S = 600


@dataclass(frozen=True)
class JobSpec:
    """What every actor needs, besides the model's files."""

    model: str            # NAME@VERSION, resolved by the driver
    lm: str | None        # NAME@VERSION of the LM for beam search, or None
    decoder: str
    beam_width: int
    alpha: float | None
    beta: float | None
    precision: str
    device: str
    batch_size: int
    threads: int
    sample_rate: int
    frame_duration_s: float


def registry_files(version_dir: Path) -> dict[str, bytes]:
    """A registry version's files by relative path: what the actors load the model (or LM) from."""
    return {p.relative_to(version_dir).as_posix(): p.read_bytes() for p in sorted(version_dir.rglob("*")) if p.is_file()}


def _materialize(files: dict[str, bytes], folder: Path) -> Path:
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    return folder


def read_row(row: dict, sample_rate: int, frame_duration_s: float) -> dict:
    """Stage 1: one file's windows as bytes (Arrow holds them as binary), or the reason it cannot be read.

    A file travels as one row: its audio at the model's rate, 230 MB for an hour at 16 kHz; Ray Data's
    backpressure bounds how many rows wait between the stages.
    """
    from cli.archive_inputs import local_file
    from cli.inference import native_stderr_silenced
    from cli.windowed import read_file
    from model.audio import AudioError

    out = {"key": row["key"], "path": row["path"], "error": "", "duration_s": 0.0, "windows": "[]", "audio": b"",
           "read_node": _node_id()}
    try:
        with native_stderr_silenced(), local_file(row["path"]) as path:
            audio = read_file(path, sample_rate, frame_duration_s)
    except AudioError as exc:
        return {**out, "error": str(exc)}
    except Exception as exc:  # noqa: BLE001 - a bad file is recorded, never the end of the job
        return {**out, "error": f"{row['path']}: {type(exc).__name__}: {exc}"}
    windows = [[w.start_sample, w.end_sample, w.keep_from_frame, w.keep_to_frame, w.samples_per_frame]
               for w in audio.windows]
    return {**out, "duration_s": audio.duration_s, "windows": json.dumps(windows),
            "audio": b"".join(np.ascontiguousarray(s, dtype=np.float32).tobytes() for s in audio.samples)}


def _node_id() -> str:
    """The Ray node this runs on ("local" outside Ray, as in tests of the stages)."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


class Transcriber:
    """Stage 2, one per actor: the inference form loaded once, then batches of read files to records."""

    def __init__(self, spec: JobSpec, model_files, lm_files) -> None:
        import ray
        import torch

        from cli.windowed import decoder_factory
        from model.checkpoint import load_artifact
        from model.inference import for_inference
        from model.precision import check_device, resolve_precision

        torch.set_num_threads(spec.threads)
        self.spec = spec
        self.node = _node_id()
        self._scratch = tempfile.TemporaryDirectory(prefix="asr-batch-")
        scratch = Path(self._scratch.name)
        # The files come through the object store (refs), or as they are when called outside Ray (tests).
        model_files, lm_files = (ray.get(f) if isinstance(f, ray.ObjectRef) else f for f in (model_files, lm_files))
        device = check_device(spec.device)
        model = load_artifact(_materialize(model_files, scratch / "model"), device)
        self.model = for_inference(model, resolve_precision(spec.precision, device), device)
        beam = lm = None
        if spec.decoder == "beam":
            from lm.model_lm import BeamDecoders, LMChoice
            from model.registry import Registry

            registry = Registry(scratch / "registry")
            if spec.lm is not None:
                name, version = spec.lm.split("@")
                _materialize(lm_files, scratch / "registry" / name / version)
            lm = LMChoice(spec.lm, spec.alpha or 0.0, spec.beta or 0.0)
            beam = BeamDecoders(registry).get(self.model.vocabulary.labels, spec.lm)
        self.new_decoder = decoder_factory(self.model, spec.decoder, beam=beam, lm=lm, beam_width=spec.beam_width)

    def __call__(self, batch: dict) -> dict:
        from cli.windowed import FileAudio, transcribe_files
        from model.long_audio import AudioWindow

        keys, paths, errors = list(batch["key"]), list(batch["path"]), list(batch["error"])
        readable = [i for i, e in enumerate(errors) if not e]
        files = []
        for i in readable:
            windows = tuple(AudioWindow(*w) for w in json.loads(batch["windows"][i]))
            flat = np.frombuffer(bytearray(batch["audio"][i]), dtype=np.float32)  # writable, as torch wants
            bounds = np.cumsum([0] + [w.end_sample - w.start_sample for w in windows])
            files.append(FileAudio(paths[i], float(batch["duration_s"][i]), windows,
                                   tuple(flat[a:b] for a, b in zip(bounds[:-1], bounds[1:]))))
        records = [""] * len(keys)
        try:
            transcripts = transcribe_files(self.model, files, self.new_decoder, self.spec.batch_size)
        except Exception:  # noqa: BLE001 - one file's failure must not fail the others: one at a time then
            transcripts = [self._alone(audio) for audio in files]
        for i, audio, transcript in zip(readable, files, transcripts):
            if isinstance(transcript, str):
                errors[i] = transcript
            else:
                records[i] = json.dumps(record(keys[i], paths[i], audio.duration_s, transcript, self.spec.model))
        return {"key": keys, "error": errors, "record": records, "node": [self.node] * len(keys),
                "read_node": list(batch["read_node"])}

    def _alone(self, audio):
        """One file's transcript, or the reason it failed."""
        from cli.windowed import transcribe_files

        try:
            return transcribe_files(self.model, [audio], self.new_decoder, self.spec.batch_size)[0]
        except Exception as exc:  # noqa: BLE001 - recorded for this file; the job goes on
            return f"{audio.path}: transcription failed: {type(exc).__name__}: {exc}"


@dataclass
class Outcome:
    """What a run did: per-file failures, counts, and audio seconds transcribed in this run."""

    done_now: int = 0
    skipped: int = 0
    audio_s: float = 0.0
    failed: dict[str, str] = field(default_factory=dict)
    files_by_node: dict[str, int] = field(default_factory=dict)  # which Ray nodes transcribed how many
    reads_by_node: dict[str, int] = field(default_factory=dict)  # and which read (decoded) how many


def run_job(items: list[Item], out: Path, formats: tuple[str, ...], spec: JobSpec, model_files: dict[str, bytes],
            lm_files: dict[str, bytes] | None, *, address: str | None, workers: int | None,
            cpus_per_worker: float, gpus_per_worker: float, progress: bool = True) -> Outcome:
    """Transcribes every item not done yet under ``out``; returns this run's outcome (the caller summarizes)."""
    import ray

    outcome = Outcome()
    remove_partial_files(out)
    todo = [item for item in items if not is_done(out, item.key)]
    outcome.skipped = len(items) - len(todo)
    if not todo:
        return outcome
    if not ray.is_initialized():
        # No address is a new local instance, never a `ray start` cluster that ray.init() would join.
        # A local instance gets the actors' CPUs plus one for the readers, or they would wait forever.
        wanted = workers or (os.cpu_count() or 1)
        local = {"num_cpus": max(os.cpu_count() or 1, math.ceil(wanted * cpus_per_worker) + 1)}
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                 **({} if address else local))
    workers = workers or default_workers(cpus_per_worker, gpus_per_worker)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = progress
    context.enable_operator_progress_bars = progress
    # Start transcribing once the whole pool is up, not as soon as its first actor is: an actor still
    # loading its model on a busy node would otherwise find the archive already done by the others
    # (seen on two nodes under load: one node did every file). A cluster that cannot place the pool
    # fails with Ray's "Timed out while starting actors" instead of waiting for ever.
    context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    dataset = ray.data.from_items([{"key": i.key, "path": i.path} for i in todo],
                                  override_num_blocks=min(len(todo), 200))
    read = dataset.map(read_row, fn_kwargs={"sample_rate": spec.sample_rate,
                                            "frame_duration_s": spec.frame_duration_s}, num_cpus=1)
    model_ref = ray.put(model_files)
    lm_ref = ray.put(lm_files) if lm_files is not None else None
    transcribed = read.map_batches(
        Transcriber, fn_constructor_kwargs={"spec": spec, "model_files": model_ref, "lm_files": lm_ref},
        batch_size=FILES_PER_CALL, batch_format="numpy", compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=cpus_per_worker, num_gpus=gpus_per_worker or None,
        # Across nodes, not wherever the first free CPUs are: every node's cores (and memory bandwidth)
        # work, and a busy node does not end up holding the whole pool.
        scheduling_strategy="SPREAD")
    for row in _rows(transcribed):
        outcome.files_by_node[row["node"]] = outcome.files_by_node.get(row["node"], 0) + 1
        outcome.reads_by_node[row["read_node"]] = outcome.reads_by_node.get(row["read_node"], 0) + 1
        if row["error"]:
            outcome.failed[row["key"]] = row["error"]
            continue
        rec = json.loads(row["record"])
        write_result(out, formats, rec)
        outcome.done_now += 1
        outcome.audio_s += rec["duration"]
    return outcome


def default_workers(cpus_per_worker: float, gpus_per_worker: float) -> int:
    """One actor per GPU share, else per CPU share with one CPU of every node left to the reading tasks."""
    import ray

    resources = ray.cluster_resources()
    if gpus_per_worker > 0:
        return max(1, int(resources.get("GPU", 0) // gpus_per_worker))
    nodes = sum(1 for node in ray.nodes() if node.get("Alive"))
    return max(1, int((resources.get("CPU", 1) - nodes) // cpus_per_worker))


def _rows(dataset) -> Iterator[dict]:
    for row in dataset.iter_rows():
        yield {k: (v.decode() if isinstance(v, bytes) else v) for k, v in row.items()}


def summarize(items: list[Item], out: Path, outcome: Outcome, wall_s: float, kind: str, with_results: bool,
              scores: dict | None) -> dict:
    """The run's summary (printed and kept in run.json with the done and failed lists)."""
    summary = {"input_kind": kind, "files": len(items), "done_this_run": outcome.done_now,
               "skipped_already_done": outcome.skipped, "failed": len(outcome.failed),
               "audio_hours_this_run": round(outcome.audio_s / 3600, 4), "wall_s": round(wall_s, 2),
               "x_real_time": round(outcome.audio_s / wall_s, 2) if wall_s > 0 else None, "out": str(out),
               "files_by_node": dict(sorted(outcome.files_by_node.items())),
               "reads_by_node": dict(sorted(outcome.reads_by_node.items()))}
    if scores is not None:
        summary["scores"] = scores
    write_run_files(out, [i.key for i in items], outcome.failed, summary, with_results)
    return summary


def print_summary(summary: dict, failed: dict[str, str]) -> None:
    print(f"{summary['files']} files: {summary['done_this_run']} transcribed now, {summary['skipped_already_done']} "
          f"already done, {summary['failed']} failed; {summary['audio_hours_this_run']:.3f} h of audio in "
          f"{summary['wall_s']:.1f} s ({summary['x_real_time']}x real time)")
    if "scores" in summary:
        s = summary["scores"]
        print(f"against the manifest's texts: WER {s['wer'] * 100:.2f}%  CER {s['cer'] * 100:.2f}% "
              f"({s['num_utterances']} utterances)")
    for key in sorted(failed)[:10]:
        print(f"failed: {failed[key]}", file=sys.stderr)
    if len(failed) > 10:
        print(f"... and {len(failed) - 10} more failures (run.json lists them all)", file=sys.stderr)
    print(f"results in {summary['out']} (run manifest: {summary['out']}/run.json)")
