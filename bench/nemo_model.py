"""The NeMo model the NeMo-side bench scripts build (NeMo's venv): a block table, random weights, seeded."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fixtures"))
from make_nemo_fixtures import model_cfg  # noqa: E402


def build_nemo_model(blocks_json: str | Path, seed: int):
    """An EncDecCTCModel (CPU, float32) of the encoder blocks listed in ``blocks_json`` (NeMo's jasper list)."""
    import torch
    from nemo.collections.asr.models import EncDecCTCModel
    from omegaconf import OmegaConf

    torch.manual_seed(seed)
    blocks = json.loads(Path(blocks_json).read_text())
    config = model_cfg(blocks)
    config["decoder"]["feat_in"] = blocks[-1]["filters"]
    return EncDecCTCModel(cfg=OmegaConf.create(config), trainer=None).float().cpu()
