"""`asr models pull`: NeMo-made checkpoints fetched from loopback stand-ins for the Hub, NGC and a URL.

The stand-in (tests/interop/hub_standin.py) speaks the requests huggingface_hub and NGC's download
URLs use; no test touches the internet. The checkpoints are NeMo 3.0.0's own random-weight
QuartzNet and Citrinet fixtures, so a pulled model's log-probs can be held to NeMo's.
"""

from __future__ import annotations

import errno
import hashlib
import json
import threading
from pathlib import Path

import numpy as np
import pytest

from interop.hubs import PullError, Source, parse_source
from model.errors import Kind
from model.registry import Registry

from tests.cli.helpers import asr_console, asr_in_process
from tests.interop.hub_standin import HubFile, Standin
from tests.interop.test_nemo_parity import FIXTURES, MANIFEST, PARITY_ATOL, _conformer, _modified_copy

QUARTZNET = (FIXTURES / "quartznet_small.nemo").read_bytes()
CITRINET = (FIXTURES / "citrinet_small.nemo").read_bytes()
CITRINET_MANIFEST = json.loads((FIXTURES / "citrinet_manifest.json").read_text())
NGC_QUARTZNET = "nvidia/nemo/stt_en_quartznet15x5/versions/1.0.0rc1/files/stt_en_quartznet15x5.nemo"


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    standin = Standin()
    standin.hf["nvidia/stt_en_citrinet_256_ls"] = {"stt_en_citrinet_256_ls.nemo": HubFile(CITRINET)}
    standin.licenses["nvidia/stt_en_citrinet_256_ls"] = "cc-by-4.0"
    standin.hf["test/quartznet"] = {"quartznet_small.nemo": HubFile(QUARTZNET)}
    standin.hf["test/two"] = {"a.nemo": HubFile(QUARTZNET), "b.nemo": HubFile(CITRINET)}
    standin.hf["test/corrupt"] = {"m.nemo": HubFile(QUARTZNET, stated_sha256="0" * 64)}
    standin.hf["test/not-nemo"] = {"m.nemo": HubFile(np.random.default_rng(0).bytes(5_000))}
    standin.hf["test/conformer"] = {"m.nemo": HubFile(_modified_copy(tmp_path / "c.nemo", _conformer).read_bytes())}
    standin.hf["test/private"] = {"m.nemo": HubFile(QUARTZNET)}
    standin.deny.add("test/private")
    standin.ngc[NGC_QUARTZNET] = QUARTZNET
    standin.ngc["nvidia/private/m/versions/1/files/m.nemo"] = QUARTZNET
    standin.deny.add("nvidia/private")
    standin.plain["/files/citrinet.nemo"] = CITRINET
    standin.start()
    monkeypatch.setenv("HF_ENDPOINT", standin.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("ASR_NGC_API_URL", standin.url)
    monkeypatch.setenv("ASR_CACHE_DIR", str(tmp_path / "asr-cache"))
    yield standin
    standin.stop()


def _pull(registry: Path, *args: str):
    return asr_in_process("--registry", str(registry), "models", "pull", *args)


def _assert_logprobs_match_nemo(registry: Path, name: str, fixture: dict, speech_root: Path, tmp_path: Path) -> None:
    out = tmp_path / f"{name}.npy"
    result = asr_in_process("--registry", str(registry), "logprobs", str(speech_root / fixture["clip"]),
                            "--model", name, "--out", str(out))
    assert result.returncode == 0, result.stderr
    expected = np.load(FIXTURES / fixture["npy"])
    got = np.load(out)
    assert got.shape == expected.shape
    assert float(np.abs(got - expected).max()) <= PARITY_ATOL


def _metadata(registry: Path, name: str, version: int = 1) -> dict:
    return json.loads((registry / name / str(version) / "metadata.json").read_text())


# ---- sources ----


@pytest.mark.parametrize("spec, expected", [
    ("hf:nvidia/stt_en_citrinet_256_ls", Source("hf", "nvidia/stt_en_citrinet_256_ls")),
    ("hf:org/repo@v1.0:sub/m.nemo", Source("hf", "org/repo", "v1.0", "sub/m.nemo")),
    ("ngc:nvidia/nemo/stt_en_quartznet15x5:1.0.0rc1", Source("ngc", "nvidia/nemo/stt_en_quartznet15x5", "1.0.0rc1")),
    ("ngc:nvidia/nemospeechmodels:1.0.0a5:QuartzNet15x5Base-En.nemo",
     Source("ngc", "nvidia/nemospeechmodels", "1.0.0a5", "QuartzNet15x5Base-En.nemo")),
    ("https://h.example/a/m.nemo#sha256=" + "A" * 64, Source("url", "https://h.example/a/m.nemo", sha256="a" * 64)),
])
def test_sources_parse_and_print_back(spec, expected):
    assert parse_source(spec) == expected
    assert parse_source(str(expected)) == expected


@pytest.mark.parametrize("spec", ["hf:nvidia", "hf:a/b:weights.bin", "hf:a/b:../m.nemo", "ngc:nvidia/nemo/m",
                                  "ngc:nvidia/../../m:1", "ngc:nvidia/nemo/m:..", "hf:../b", "hf:a/..",
                                  "s3://bucket/m.nemo", "https://h/m.nemo#md5=abc", "https:///m.nemo"])
def test_malformed_sources_are_refused(spec):
    with pytest.raises(PullError) as excinfo:
        parse_source(spec)
    assert excinfo.value.kind is Kind.BAD_REQUEST


# ---- pulls that work ----


def test_hub_pull_imports_with_nemo_log_probs_and_a_card(hub, tmp_path, speech_root):
    registry = tmp_path / "registry"
    result = _pull(registry, "hf:nvidia/stt_en_citrinet_256_ls")
    assert (result.returncode, result.stdout.strip()) == (0, "stt_en_citrinet_256_ls@1"), result.stderr
    _assert_logprobs_match_nemo(registry, "stt_en_citrinet_256_ls", CITRINET_MANIFEST["fixtures"][0], speech_root,
                                tmp_path)
    extra = _metadata(registry, "stt_en_citrinet_256_ls")["extra"]
    assert extra["pulled"] == {"source": "hf:nvidia/stt_en_citrinet_256_ls", "resolved": hub.commit,
                               "sha256": hashlib.sha256(CITRINET).hexdigest(), "size_bytes": len(CITRINET),
                               "checked": ["size", "sha256"], "license": "cc-by-4.0"}
    card = extra["card"]  # the catalog's publisher facts, since this is the catalog's repository
    assert card["published_wer"] == {"librispeech_test_clean": 3.8, "librispeech_test_other": 9.8}
    assert card["trained_on"] == ["LibriSpeech 960 h"] and card["license"] == "cc-by-4.0"
    # The Hub was asked through its own protocol: the model's info, then the file on the default branch.
    assert ("GET", "/api/models/nvidia/stt_en_citrinet_256_ls") in hub.requests
    assert ("GET", "/nvidia/stt_en_citrinet_256_ls/resolve/main/stt_en_citrinet_256_ls.nemo") in hub.requests


def test_ngc_and_url_pulls_with_nemo_log_probs(hub, tmp_path, speech_root):
    registry = tmp_path / "registry"
    result = _pull(registry, "ngc:nvidia/nemo/stt_en_quartznet15x5:1.0.0rc1", "--activate")
    assert (result.returncode, result.stdout.strip()) == (0, "stt_en_quartznet15x5@1"), result.stderr
    _assert_logprobs_match_nemo(registry, "stt_en_quartznet15x5", MANIFEST["fixtures"][0], speech_root, tmp_path)
    assert ("GET", f"/storage/{NGC_QUARTZNET}") in hub.requests  # NGC's redirect to storage was followed
    assert Registry(registry).serving_state("stt_en_quartznet15x5")["active"] == 1
    assert _metadata(registry, "stt_en_quartznet15x5")["extra"]["pulled"]["checked"] == ["size"]

    url = f"{hub.url}/files/citrinet.nemo#sha256={hashlib.sha256(CITRINET).hexdigest()}"
    result = _pull(registry, url, "--name", "citrinet")
    assert (result.returncode, result.stdout.strip()) == (0, "citrinet@1"), result.stderr
    _assert_logprobs_match_nemo(registry, "citrinet", CITRINET_MANIFEST["fixtures"][0], speech_root, tmp_path)
    assert _metadata(registry, "citrinet")["extra"]["pulled"]["checked"] == ["size", "sha256"]


def test_a_second_pull_answers_from_the_cache_with_the_network_off(hub, tmp_path, monkeypatch):
    specs = {"hf:test/quartznet": "quartznet", "ngc:nvidia/nemo/stt_en_quartznet15x5:1.0.0rc1": "stt_en_quartznet15x5",
             f"{hub.url}/files/citrinet.nemo": "citrinet"}
    first = tmp_path / "first"
    for spec, name in specs.items():
        assert _pull(first, spec).stdout.strip() == f"{name}@1"
    hub.stop()  # the network is off from here on
    for spec, name in specs.items():
        again = _pull(first, spec)  # the same registry: nothing new is published
        assert (again.returncode, again.stdout.strip()) == (0, f"{name}@1"), again.stderr
        assert "already in the registry" in again.stderr
        fresh = _pull(tmp_path / "second", spec)  # another registry: published from the cache alone
        assert (fresh.returncode, fresh.stdout.strip()) == (0, f"{name}@1"), fresh.stderr
        assert (_metadata(tmp_path / "second", name)["extra"]["pulled"]["sha256"]
                == _metadata(first, name)["extra"]["pulled"]["sha256"])
    assert sorted(p.name for p in first.iterdir() if not p.name.startswith(".")) == sorted(specs.values())
    # A hub source as the default model (as a server takes it) names the pulled model for the CLI too.
    monkeypatch.setenv("ASR_DEFAULT_MODEL", "hf:test/quartznet")
    clip = str(Path(__file__).resolve().parents[2].parent / "shared" / "speech" / MANIFEST["fixtures"][0]["clip"])
    transcribed = asr_in_process("--registry", str(first), "transcribe", clip, "--json")
    assert transcribed.returncode == 0 and json.loads(transcribed.stdout)["model"] == "quartznet@1", \
        transcribed.stderr
    # The console script, as a user runs it, with the Hub's own offline switch (read when huggingface_hub loads).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline = asr_console("--registry", str(tmp_path / "third"), "models", "pull", "hf:test/quartznet")
    assert (offline.returncode, offline.stdout.strip(), offline.stderr) == (0, "quartznet@1", "")
    assert all(not (first / name / "2").exists() for name in specs.values())


def test_a_broken_download_resumes_where_it_stopped(hub, tmp_path):
    registry = tmp_path / "registry"
    hub.truncate_once.add(f"/storage/{NGC_QUARTZNET}")
    broken = _pull(registry, "ngc:nvidia/nemo/stt_en_quartznet15x5:1.0.0rc1")
    broken.assert_one_line_error("broke off", "resume")
    assert not registry.exists() or not (registry / "stt_en_quartznet15x5").exists()
    part = next((tmp_path / "asr-cache").rglob("*.part"))
    assert part.stat().st_size == len(QUARTZNET) // 2  # what arrived is kept
    result = _pull(registry, "ngc:nvidia/nemo/stt_en_quartznet15x5:1.0.0rc1")
    assert (result.returncode, result.stdout.strip()) == (0, "stt_en_quartznet15x5@1"), result.stderr
    assert not part.exists()
    assert (f"/storage/{NGC_QUARTZNET}", f"bytes={len(QUARTZNET) // 2}-") in hub.ranges  # only the rest was asked for
    # The Hub's client retries by itself within one pull (from its last whole 10 MB chunk: here, the start).
    hub.truncate_once.add("/test/quartznet/resolve/main/quartznet_small.nemo")
    result = _pull(registry, "hf:test/quartznet")
    assert (result.returncode, result.stdout.strip()) == (0, "quartznet@1"), result.stderr


# ---- refusals: one line, exit 2, nothing in the registry ----


REFUSALS = {
    "hub-404": ("hf:test/missing", "no such model repository"),
    "hub-401": ("hf:test/private", "no such model repository"),  # the Hub answers 401 for private and missing alike
    "hub-revision": ("hf:test/quartznet@v9", "no revision 'v9'"),
    "hub-file": ("hf:test/quartznet:other.nemo", "has no other.nemo"),
    "hub-two-files": ("hf:test/two", "name one as hf:test/two:FILE.nemo"),
    "ngc-404": ("ngc:nvidia/nemo/missing:1.0", "not found (HTTP 404)"),
    "ngc-401": ("ngc:nvidia/private/m:1", "refused the download (HTTP 401)"),
    "url-404": ("{url}/files/missing.nemo", "not found (HTTP 404)"),
    "checksum": ("hf:test/corrupt", "checksum mismatch"),
    "url-checksum": ("{url}/files/citrinet.nemo#sha256=" + "1" * 64, "checksum mismatch"),
    "not-a-nemo": ("hf:test/not-nemo", "unreadable .nemo archive"),
    "conformer": ("hf:test/conformer", "ConformerEncoder"),
    "unreachable": ("http://127.0.0.1:9/m.nemo", "cannot reach the host"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_are_one_line_and_publish_nothing(case, hub, tmp_path):
    spec, fragment = REFUSALS[case]
    registry = tmp_path / "registry"
    line = _pull(registry, spec.format(url=hub.url), "--name", "m").assert_one_line_error(fragment)
    assert str(tmp_path) not in line  # the cache's paths are no business of the message
    assert not (registry / "m").exists()


def test_a_truncated_download_is_refused_and_not_kept(hub, tmp_path):
    hub.truncate_always.add("/test/quartznet/resolve/main/quartznet_small.nemo")
    _pull(tmp_path / "registry", "hf:test/quartznet").assert_one_line_error("hf:test/quartznet", "broke off")
    assert not (tmp_path / "registry" / "quartznet").exists()
    assert not [p for p in (tmp_path / "hf-home").rglob("*") if p.is_file() and p.stat().st_size == len(QUARTZNET)]


def test_a_full_disk_leaves_the_registry_as_it_was(hub, tmp_path, monkeypatch):
    import model.registry as registry_module

    def full(path, content):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(registry_module, "_write_file", full)
    registry = tmp_path / "registry"
    _pull(registry, "hf:test/quartznet").assert_one_line_error("cannot publish", "No space left on device")
    assert not (registry / "quartznet").exists()
    assert not any((registry / ".tmp").iterdir()) if (registry / ".tmp").exists() else True


# ---- the catalog ----


def test_the_catalog_lists_pullable_sources(tmp_path):
    result = asr_in_process("models", "catalog", "--json")
    assert result.returncode == 0
    catalog = json.loads(result.stdout)
    names = {m["name"] for m in catalog["models"]}
    assert {"stt_en_citrinet_256_ls", "stt_en_quartznet15x5", "stt_en_jasper10x5dr", "stt_en_citrinet_1024"} <= names
    for model in catalog["models"]:
        source = parse_source(model["pull"])
        assert source.default_name == model["name"]  # a pull publishes under the catalog's name
        assert model["published_wer"] and model["wer_source"]
    assert "none of the listed checkpoints was downloaded" in catalog["verified"]
    text = asr_in_process("models", "catalog")
    assert text.returncode == 0 and "hf:nvidia/stt_en_citrinet_256_ls" in text.stdout


# ---- pull jobs (the admin API's) ----


def test_a_second_pull_of_the_same_source_joins_the_running_job():
    from service.pull_jobs import PullJobs

    release, calls = threading.Event(), []

    def run(source, **kwargs):
        calls.append(source)
        release.wait(10)
        raise PullError(f"{source}: not found (HTTP 404)", Kind.NOT_FOUND)

    jobs = PullJobs(run)
    first, started = jobs.start("hf:a/b", None, False)
    second, started_again = jobs.start("hf:a/b", None, True)
    other, _ = jobs.start("hf:a/c", None, False)
    assert started and not started_again and second is first and other is not first
    assert first.activate  # the joined request's wish is kept
    release.set()
    for job in (first, other):
        for _ in range(500):
            if job.state != "running":
                break
            threading.Event().wait(0.01)
    assert first.state == "failed" and first.error["status"] == 404 and first.error["code"] == "pull_not_found"
    assert calls.count("hf:a/b") == 1
