"""`asr transcribe-batch` on a real two-node Ray cluster (a head and a worker node, each its own raylet, started
by ray.cluster_utils.Cluster): 205 files (AN4 test, FSDD test, two 86 s files, three bad ones) give exactly
`asr transcribe`'s transcripts, bad files are listed with reasons, a driver killed halfway leaves only whole
results, and the rerun transcribes only the remainder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cli.archive_inputs import InputError, list_inputs
from tests.cli.helpers import REPO_ROOT, asr_in_process
from tests.tiny_model import publish_tiny_model

SPEECH = REPO_ROOT.parent / "shared" / "speech"
AN4_FILES, FSDD_FILES, LONG_FILES, BAD_FILES = 130, 70, 2, 3

pytestmark = pytest.mark.skipif(not (SPEECH / "an4_test.json").exists() or not (SPEECH / "fsdd_test.json").exists(),
                                reason="needs the shared AN4 and FSDD test sets")


def _manifest_paths(name: str, limit: int) -> list[Path]:
    rows = [json.loads(line) for line in (SPEECH / name).read_text().splitlines()[:limit]]
    return [SPEECH / r["audio_filepath"] for r in rows]


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> tuple[Path, Path, list[str], list[str]]:
    """(registry, folder, good file keys, bad file keys): the clips linked into one folder, plus long and bad files."""
    root = tmp_path_factory.mktemp("archive")
    registry = root / "registry"
    publish_tiny_model(registry, "tiny", seed=0)
    folder = root / "input"
    good = []
    for group, paths in (("an4", _manifest_paths("an4_test.json", AN4_FILES)),
                         ("fsdd", _manifest_paths("fsdd_test.json", FSDD_FILES))):
        (folder / group).mkdir(parents=True)
        for path in paths:
            (folder / group / path.name).symlink_to(path)
            good.append(f"{group}/{path.name}")
    clips = [sf.read(p, dtype="float32")[0] for p in _manifest_paths("an4_test.json", 25)]
    speech = np.concatenate([x for c in clips for x in (c, np.zeros(8000, np.float32))])  # 86 s: three windows
    (folder / "long").mkdir()
    sf.write(folder / "long" / "talk.flac", speech, 16_000)
    sf.write(folder / "long" / "talk_44k.wav", np.interp(np.arange(0, len(speech), 16_000 / 44_100),
                                                        np.arange(len(speech)), speech).astype(np.float32), 44_100)
    good += ["long/talk.flac", "long/talk_44k.wav"]
    (folder / "bad").mkdir()
    (folder / "bad" / "empty.wav").write_bytes(b"")
    (folder / "bad" / "noise.mp3").write_bytes(np.random.default_rng(0).bytes(4000))
    sf.write(folder / "bad" / "blip.wav", np.zeros(100, np.float32), 16_000)  # under one output frame
    bad = ["bad/blip.wav", "bad/empty.wav", "bad/noise.mp3"]
    assert len(good) == AN4_FILES + FSDD_FILES + LONG_FILES and len(good) + len(bad) >= 200
    return registry, folder, sorted(good), bad


@pytest.fixture(scope="module")
def cluster():
    """A head node and a worker node, two CPUs each, on this machine."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def _run_batch(registry: Path, folder: Path | str, out: Path, address: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "RAY_ADDRESS": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "cli.main", "--registry", str(registry), "transcribe-batch", str(folder), "--out",
         str(out), "--model", "tiny", "--address", address, "--workers", "2", "--cpus-per-worker", "1",
         "--format", "jsonl,srt,vtt,txt", "--precision", "fp32", "--json", "--quiet", *extra],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen) -> dict:
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout)


def _done_keys(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix()[:-len(".json")] for p in out.rglob("*.json") if p.name != "run.json"}


def test_an_archive_on_two_nodes_equals_asr_transcribe_and_a_killed_run_resumes(archive, cluster, tmp_path):
    registry, folder, good, bad = archive
    out = tmp_path / "out"

    # 1. Killed halfway: the driver dies after a third of the files are written.
    proc = _run_batch(registry, folder, out, cluster.address, "--batch-size", "4")
    deadline = time.monotonic() + 600
    while not out.exists() or len(_done_keys(out)) < len(good) // 3:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "no progress"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = _done_keys(out)
    assert len(good) // 3 <= len(done_before) < len(good)
    for key in done_before:  # every result there is whole: the .json is written last, each file by rename
        record = json.loads((out / f"{key}.json").read_text())
        assert record["key"] == key and all((out / f"{key}.{fmt}").is_file() for fmt in ("srt", "vtt", "txt"))

    # 2. The rerun does only the remainder.
    summary = _finish(_run_batch(registry, folder, out, cluster.address))
    assert summary["skipped_already_done"] == len(done_before)
    assert summary["done_this_run"] == len(good) - len(done_before)
    assert summary["failed"] == len(bad)
    # Both nodes worked. The pool has an actor on each (SPREAD), but with the tiny model reading is the slower
    # stage: batches then arrive one at a time and the first idle actor takes each, so which nodes transcribe
    # depends on timing; the reading tasks spread over both nodes whatever the load.
    assert len(set(summary["reads_by_node"]) | set(summary["files_by_node"])) == 2, summary
    assert not list(out.rglob(".*.tmp"))

    # 3. Bad files listed with their reasons; the job went on.
    manifest = json.loads((out / "run.json").read_text())
    reasons = {f["key"]: f["reason"] for f in manifest["failures"]}
    assert sorted(reasons) == bad
    assert "empty file" in reasons["bad/empty.wav"] and "one output frame" in reasons["bad/blip.wav"]
    assert manifest["done"] == good  # key order

    # 4. Exactly `asr transcribe`'s transcripts, word times and confidences.
    result = asr_in_process("--registry", registry, "transcribe", *[folder / k for k in good], "--model", "tiny",
                            "--precision", "fp32", "--json")
    assert result.returncode == 0, result.stderr
    expected = {Path(r["file"]).relative_to(folder).as_posix(): r for r in json.loads(result.stdout)["results"]}
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["key"] for r in lines] == good
    for got in lines:
        want = expected[got["key"]]
        assert (got["text"], got["words"], got["duration"]) == (want["text"], want["words"], want["duration"]), \
            got["key"]
    talk = next(r for r in lines if r["key"] == "long/talk.flac")
    assert talk["duration"] > 60 and (out / "long" / "talk.flac.srt").read_text().count(" --> ") >= 1


def test_inputs_are_folders_globs_lists_and_manifests(archive, tmp_path):
    _, folder, good, bad = archive
    items, kind = list_inputs(str(folder))
    assert kind == "folder" and [i.key for i in items] == sorted(good + bad)
    items, kind = list_inputs(str(folder / "long" / "*.flac"))
    assert kind == "glob" and [i.key for i in items] == ["talk.flac"]
    listing = tmp_path / "files.txt"
    listing.write_text(f"{folder / 'an4'}/{Path(good[0]).name}\n\n{folder / 'fsdd'}/{Path(good[-3]).name}\n")
    items, kind = list_inputs(str(listing))
    assert kind == "list" and [i.key for i in items] == sorted([good[0], good[-3]])
    items, kind = list_inputs(str(SPEECH / "an4_test.json"), limit=5)
    assert kind == "manifest" and len(items) == 5 and all(i.text for i in items)
    for spec in (str(tmp_path / "nothing"), str(tmp_path / "*.wav")):
        with pytest.raises(InputError):
            list_inputs(spec)


def test_bad_arguments_exit_2_with_one_line(archive, tmp_path):
    registry, folder, _, _ = archive
    for argv, fragment in (([str(tmp_path / "missing"), "--model", "tiny"], "no such folder"),
                           ([str(folder), "--model", "tiny", "--format", "docx"], "--format"),
                           ([str(folder), "--model", "tiny", "--workers", "0"], "--workers"),
                           ([str(folder), "--model", "tiny", "--device", "cuda"], "--gpus-per-worker"),
                           ([str(folder), "--model", "nosuch"], "nosuch")):
        result = asr_in_process("--registry", registry, "transcribe-batch", *argv, "--out", tmp_path / "o")
        result.assert_one_line_error(fragment)
    assert not (tmp_path / "o").exists()


def test_a_uri_input_with_beam_search_equals_asr_transcribe(archive, cluster, tmp_path):
    """A folder given as a pyarrow filesystem URI (file:// here; s3:// and the like take the same path), decoded
    with beam search: the same words as `asr transcribe --decoder beam`."""
    registry, folder, good, _ = archive
    uri_folder = tmp_path / "few"
    uri_folder.mkdir()
    names = [Path(k).name for k in good[:4]]
    for key, name in zip(good[:4], names):
        (uri_folder / name).symlink_to(folder / key)
    out = tmp_path / "out"
    summary = _finish(_run_batch(registry, f"file://{uri_folder}", out, cluster.address, "--decoder", "beam"))
    assert summary["done_this_run"] == 4 and summary["failed"] == 0
    result = asr_in_process("--registry", registry, "transcribe", *[uri_folder / n for n in names], "--model", "tiny",
                            "--precision", "fp32", "--decoder", "beam", "--json")
    expected = {Path(r["file"]).name: r for r in json.loads(result.stdout)["results"]}
    for name in names:
        got = json.loads((out / f"{name}.json").read_text())
        assert got["file"] == f"file://{uri_folder / name}"
        assert (got["text"], got["words"]) == (expected[name]["text"], expected[name]["words"])


def test_actors_load_the_model_from_the_shipped_files_not_the_registry(archive, tmp_path):
    """The driver ships the version's files; an actor needs no registry (here the registry is moved away)."""
    from cli.archive_job import JobSpec, Transcriber, read_row, registry_files
    from model.registry import Registry

    registry, folder, good, _ = archive
    copy = tmp_path / "registry"
    import shutil

    shutil.copytree(registry, copy)
    ref = Registry(copy).resolve("tiny")
    files = registry_files(ref.path)
    shutil.rmtree(copy)
    spec = JobSpec(model=str(ref), lm=None, decoder="greedy", beam_width=1, alpha=None, beta=None, precision="fp32",
                   device="cpu", batch_size=4, threads=1, sample_rate=16_000, frame_duration_s=0.02)
    rows = [read_row({"key": k, "path": str(folder / k)}, 16_000, 0.02) for k in good[:3]]
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    got = Transcriber(spec, files, None)(batch)
    result = asr_in_process("--registry", registry, "transcribe", *[folder / k for k in good[:3]], "--model", "tiny",
                            "--precision", "fp32", "--json")
    want = [r["text"] for r in json.loads(result.stdout)["results"]]
    assert [json.loads(r)["text"] for r in got["record"]] == want and got["error"] == ["", "", ""]


def test_a_file_that_fails_in_the_network_fails_alone(archive, monkeypatch):
    """A batch whose transcription raises is redone a file at a time: only the file that fails is recorded."""
    from cli.archive_job import JobSpec, Transcriber, read_row, registry_files
    from model.registry import Registry

    registry, folder, good, _ = archive
    files = registry_files(Registry(registry).resolve("tiny").path)
    spec = JobSpec(model="tiny@1", lm=None, decoder="greedy", beam_width=1, alpha=None, beta=None, precision="fp32",
                   device="cpu", batch_size=4, threads=1, sample_rate=16_000, frame_duration_s=0.02)
    rows = [read_row({"key": k, "path": str(folder / k)}, 16_000, 0.02) for k in good[:3]]
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]}
    transcriber = Transcriber(spec, files, None)
    import cli.windowed as windowed

    original = windowed.transcribe_files

    def flaky(model, audio, new_decoder, batch_size):
        if any(a.path.endswith(good[1]) for a in audio):
            raise RuntimeError("boom")
        return original(model, audio, new_decoder, batch_size)

    monkeypatch.setattr(windowed, "transcribe_files", flaky)
    got = transcriber(batch)
    assert got["error"][0] == "" and got["error"][2] == "" and "boom" in got["error"][1]
    assert got["record"][1] == "" and json.loads(got["record"][0])["key"] == good[0]
