"""One beam path: `asr transcribe --decoder beam` and POST /transcribe with the beam decoder give the same
words, times and confidences on all of AN4 test (the starter @6 with its recorded LM and tuned weights)."""

from __future__ import annotations

import json

import pytest

from tests.cli.helpers import REPO_ROOT, asr_in_process
from tests.service.conftest import make_config, running_app

STARTER = REPO_ROOT / "starter" / "registry"
MODEL = "an4-quartznet@6"


def _cli(paths) -> dict[str, dict]:
    # fp32 and one clip per batch on both sides, so both run the very same arithmetic: the
    # comparison is exact, no tolerance (batch shapes change float rounding, not the path).
    result = asr_in_process("--registry", str(STARTER), "transcribe", *map(str, paths), "--model", MODEL,
                            "--decoder", "beam", "--precision", "fp32", "--batch-size", "1", "--json")
    assert result.returncode == 0, result.stderr
    return {row["file"]: row for row in json.loads(result.stdout)["results"]}


async def _service(paths) -> dict[str, dict]:
    rows = {}
    async with running_app(make_config(STARTER, default_model=MODEL, max_batch_size=1)) as (client, _):
        for path in paths:  # one at a time: each request is a batch of one
            response = await client.post("/transcribe", files={"file": (path.name, path.read_bytes())},
                                         data={"decoder": "beam", "word_timestamps": "true"})
            assert response.status_code == 200, response.text
            rows[str(path)] = response.json()
    return rows


@pytest.mark.anyio
async def test_cli_and_service_beam_decodes_are_identical_on_an4_test(an4_paths) -> None:
    cli = _cli(an4_paths)
    service = await _service(an4_paths)
    assert len(cli) == len(service) == len(an4_paths) == 130
    for path in map(str, an4_paths):
        ours = [(w["word"], w["start"], w["end"], w["confidence"]) for w in cli[path]["words"]]
        theirs = [(w["word"], w["start"], w["end"], w["confidence"]) for w in service[path]["words"]]
        assert (cli[path]["text"], ours) == (service[path]["text"], theirs), path
    # The LM is in play: the tuned weights change some transcripts against greedy decoding.
    greedy = asr_in_process("--registry", str(STARTER), "transcribe", *map(str, an4_paths[:40]), "--model", MODEL,
                            "--precision", "fp32", "--batch-size", "1", "--json")
    greedy_text = [row["text"] for row in json.loads(greedy.stdout)["results"]]
    assert greedy_text != [cli[str(p)]["text"] for p in an4_paths[:40]]
