"""NeMo `.nemo` interop: import char-CTC QuartzNet/Jasper checkpoints as SpeechRecognizers, and export back."""

from __future__ import annotations

import io
import re
import tarfile
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from model.features import MelFeaturizerConfig
from model.quartznet import BlockConfig, QuartzNetConfig
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.vocabulary import Vocabulary

CONFIG_MEMBER = "model_config.yaml"
WEIGHTS_MEMBER = "model_weights.ckpt"
# Archives bigger than this are refused before extraction: Jasper 10x5DR is ~1.3 GB.
_MAX_MEMBER_BYTES = 4 << 30


class NemoImportError(ValueError):
    """A .nemo file we cannot read or a config we do not support; the message says which."""


# ---- archive and config reading ----


def _read_archive(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise NemoImportError(f"{path}: file not found")
    try:
        # NeMo writes uncompressed tars since 2022 and gzip tars before; "r:*" reads both.
        with tarfile.open(path, "r:*") as tar:
            members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
            for needed in (CONFIG_MEMBER, WEIGHTS_MEMBER):
                if needed not in members:
                    raise NemoImportError(f"{path}: not a .nemo archive (no {needed} inside)")
                if members[needed].size > _MAX_MEMBER_BYTES:
                    raise NemoImportError(f"{path}: {needed} is implausibly large ({members[needed].size} bytes)")
            config_text = tar.extractfile(members[CONFIG_MEMBER]).read().decode("utf-8")
            weights_bytes = tar.extractfile(members[WEIGHTS_MEMBER]).read()
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise NemoImportError(f"{path}: unreadable .nemo archive ({' '.join(str(exc).split())})") from None
    try:
        config = yaml.safe_load(config_text)
    except yaml.YAMLError as exc:
        raise NemoImportError(f"{path}: invalid {CONFIG_MEMBER} ({' '.join(str(exc).split())})") from None
    try:
        # weights_only: a .nemo from the internet must never be able to run code when loaded.
        with warnings.catch_warnings():  # old pickle protocols warn over several lines; we report one
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(weights_bytes), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, ...)
        raise NemoImportError(f"{path}: cannot read {WEIGHTS_MEMBER} safely ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise NemoImportError(f"{path}: unexpected .nemo contents")
    return config, state


def _params(section: Any) -> dict[str, Any]:
    """Flattens NeMo's two sub-config forms: ``{_target_: X, **kw}`` and the 1.0-era ``{cls: X, params: {...}}``."""
    if not isinstance(section, dict):
        return {"_target_": ""}
    params = dict(section.get("params") or {})
    params.update({k: v for k, v in section.items() if k not in ("params",)})
    params["_target_"] = section.get("_target_") or section.get("cls") or ""
    return params


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise NemoImportError(f"unsupported NeMo config: {message}")


def _version_tuple(text: Any) -> tuple[int, int]:
    match = re.match(r"(\d+)\.(\d+)", str(text or ""))
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def _features_config(config: dict[str, Any], frontend: str | None) -> MelFeaturizerConfig:
    pre = _params(config.get("preprocessor"))
    _require("AudioToMelSpectrogramPreprocessor" in pre["_target_"],
             f"preprocessor {pre['_target_'] or '(missing)'} (only AudioToMelSpectrogramPreprocessor)")
    _require(str(pre.get("window", "hann")) == "hann", f"window {pre.get('window')!r} (only hann)")
    _require(int(pre.get("frame_splicing", 1)) == 1, "frame_splicing > 1")
    _require(not pre.get("exact_pad", False), "exact_pad: true")
    _require(pre.get("log", True) in (True, "true"), "log: false")
    _require(str(pre.get("log_zero_guard_type", "add")) == "add", "log_zero_guard_type other than 'add'")
    _require(str(pre.get("mel_norm", "slaney")) == "slaney", f"mel_norm {pre.get('mel_norm')!r}")
    normalize = pre.get("normalize", "per_feature")
    normalize = "none" if normalize in (None, "None", "none", False) else normalize
    _require(normalize in ("per_feature", "none"), f"normalize {normalize!r} (per_feature or none only)")
    sample_rate = int(pre.get("sample_rate", config.get("sample_rate", 16000)))
    if frontend is None:
        # NeMo 2.5 changed STFT padding and frame counts; files without a version predate it.
        frontend = "nemo25" if _version_tuple(config.get("nemo_version")) >= (2, 5) else "nemo24"
    pad_to = pre.get("pad_to", 16)
    return MelFeaturizerConfig(
        sample_rate=sample_rate, window_size_s=float(pre.get("window_size", 0.02)),
        window_stride_s=float(pre.get("window_stride", 0.01)),
        n_fft=int(pre.get("n_fft") or 2 ** (int(float(pre.get("window_size", 0.02)) * sample_rate) - 1).bit_length()),
        preemph=float(pre.get("preemph", 0.97) or 0.0), num_mels=int(pre.get("features", pre.get("nfilt", 64))),
        lowfreq_hz=float(pre.get("lowfreq", 0) or 0), highfreq_hz=(float(pre["highfreq"]) if pre.get("highfreq") else None),
        mag_power=float(pre.get("mag_power", 2.0)), log_zero_guard=float(pre.get("log_zero_guard_value", 2**-24)),
        normalize=normalize, pad_to=int(pad_to) if isinstance(pad_to, int) else 0,
        dither=float(pre.get("dither", 1e-5)), frontend=frontend)


def _network_config(config: dict[str, Any]) -> tuple[QuartzNetConfig, Vocabulary]:
    _require("tokenizer" not in config, "BPE/subword tokenizer models (only character vocabularies)")
    enc = _params(config.get("encoder"))
    _require(enc["_target_"].endswith("ConvASREncoder"),
             f"encoder {enc['_target_'] or '(missing)'} (only ConvASREncoder: QuartzNet/Jasper)")
    _require(str(enc.get("activation", "relu")) == "relu", f"activation {enc.get('activation')!r} (relu only)")
    _require(enc.get("conv_mask", True) in (True, "true"), "conv_mask: false")
    _require(str(enc.get("normalization_mode", "batch")) == "batch", "normalization other than batch")
    _require(str(enc.get("residual_mode", "add")) == "add", f"residual_mode {enc.get('residual_mode')!r}")
    _require(int(enc.get("frame_splicing", 1)) == 1, "encoder frame_splicing > 1")
    blocks = []
    for index, raw in enumerate(enc.get("jasper") or []):
        where = f"encoder block {index}"
        _require(not raw.get("se", False), f"{where}: squeeze-excitation (se: true)")
        _require(int(raw.get("groups", 1)) == 1, f"{where}: grouped convs (groups > 1)")
        _require(int(raw.get("heads", -1)) == -1, f"{where}: heads")
        _require(float(raw.get("kernel_size_factor", 1.0)) == 1.0, f"{where}: kernel_size_factor != 1")
        _require(not raw.get("stride_last", False), f"{where}: stride_last")
        _require(int(raw.get("future_context", -1)) == -1, f"{where}: future_context (asymmetric padding)")
        _require(str(raw.get("residual_mode", "add")) == "add", f"{where}: residual_mode")

        def first(key: str, default: int = 1) -> int:
            value = raw.get(key, [default])
            return int(value[0] if isinstance(value, (list, tuple)) else value)

        blocks.append(BlockConfig(filters=int(raw["filters"]), repeat=int(raw.get("repeat", 1)), kernel=first("kernel"),
                                  stride=first("stride"), dilation=first("dilation"),
                                  dropout=float(raw.get("dropout", 0.0)), residual=bool(raw.get("residual", False)),
                                  separable=bool(raw.get("separable", False)),
                                  residual_dense=bool(raw.get("residual_dense", False))))
    _require(bool(blocks), "encoder has no jasper blocks")
    dec = _params(config.get("decoder"))
    _require(dec["_target_"].endswith("ConvASRDecoder"), f"decoder {dec['_target_'] or '(missing)'}")
    labels = dec.get("vocabulary") or config.get("labels")
    _require(bool(labels), "no vocabulary")
    labels = tuple(str(label) for label in labels)
    _require(all(len(label) == 1 for label in labels), "multi-character labels (word pieces)")
    _require(int(dec.get("num_classes", len(labels))) == len(labels), "decoder num_classes != vocabulary size")
    feat_in = int(enc.get("feat_in", 64))
    return QuartzNetConfig(tuple(blocks), num_labels=len(labels), feat_in=feat_in, name="nemo_import"), Vocabulary(labels)


# ---- state-dict name mapping ----


def nemo_key_map(network: QuartzNetConfig) -> dict[str, str]:
    """Our parameter/buffer names -> NeMo's, for every tensor of the network and front end."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    mapping = {"featurizer.window": "preprocessor.featurizer.window", "featurizer.fb": "preprocessor.featurizer.fb",
               "network.decoder.weight": "decoder.decoder_layers.0.weight",
               "network.decoder.bias": "decoder.decoder_layers.0.bias"}
    dense_panes = 0
    for b, block in enumerate(network.blocks):
        ours, theirs = f"network.blocks.{b}", f"encoder.encoder.{b}"
        # NeMo's mconv list holds conv(s), BN, ReLU, Dropout per sub-block: 5 slots separable, 4 plain.
        stride = 5 if block.separable else 4
        for m in range(block.repeat):
            base = stride * m
            if block.separable:
                mapping[f"{ours}.sub.{m}.depthwise.weight"] = f"{theirs}.mconv.{base}.conv.weight"
                mapping[f"{ours}.sub.{m}.pointwise.weight"] = f"{theirs}.mconv.{base + 1}.conv.weight"
                norm = base + 2
            else:
                mapping[f"{ours}.sub.{m}.conv.weight"] = f"{theirs}.mconv.{base}.conv.weight"
                norm = base + 1
            for name in bn:
                mapping[f"{ours}.sub.{m}.norm.{name}"] = f"{theirs}.mconv.{norm}.{name}"
        if block.residual_dense:
            dense_panes += 1
            num_panes = dense_panes
        else:
            num_panes = 1 if block.residual else 0
        for p in range(num_panes):
            mapping[f"{ours}.residual.{p}.conv.weight"] = f"{theirs}.res.{p}.0.conv.weight"
            for name in bn:
                mapping[f"{ours}.residual.{p}.norm.{name}"] = f"{theirs}.res.{p}.1.{name}"
    return mapping


def import_nemo(path: Path | str, *, frontend: str | None = None) -> tuple[SpeechRecognizer, dict[str, Any]]:
    """Reads a char-CTC QuartzNet/Jasper `.nemo` file into a SpeechRecognizer (eval mode).

    Args:
        path: the .nemo archive (tar or tar.gz with model_config.yaml and model_weights.ckpt).
        frontend: "nemo25" or "nemo24"; None picks from the config's nemo_version (absent: nemo24).

    Returns:
        The model and an info dict (nemo_version, frontend, ignored keys) for the registry metadata.

    Raises:
        NemoImportError: unreadable archive or unsupported config, naming what is unsupported.
    """
    path = Path(path)
    config, state = _read_archive(path)
    try:
        features = _features_config(config, frontend)
        network, vocabulary = _network_config(config)
    except NemoImportError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        detail = " ".join(str(exc).split())
        raise NemoImportError(f"{path}: malformed {CONFIG_MEMBER} ({type(exc).__name__}: {detail})") from None
    _require(features.num_mels == network.feat_in,
             f"preprocessor features ({features.num_mels}) != encoder feat_in ({network.feat_in})")
    model = SpeechRecognizer(RecognizerConfig(features, network, vocabulary))
    mapping = nemo_key_map(network)
    ours = model.state_dict()
    loaded, missing = {}, []
    for our_key, their_key in mapping.items():
        if their_key in state:
            tensor = state[their_key]
            if tuple(tensor.shape) != tuple(ours[our_key].shape):
                raise NemoImportError(f"{path}: {their_key} has shape {tuple(tensor.shape)}, "
                                      f"expected {tuple(ours[our_key].shape)} from its config")
            loaded[our_key] = tensor.to(ours[our_key].dtype)
        elif not our_key.startswith("featurizer.") and not our_key.endswith("num_batches_tracked"):
            missing.append(their_key)
    if missing:
        raise NemoImportError(f"{path}: checkpoint lacks {len(missing)} tensors the config needs, e.g. {missing[0]}")
    # Old stft_conv checkpoints carry no window/fb: the computed ones are then used.
    model.load_state_dict(loaded, strict=False)
    ignored = sorted(set(state) - set(mapping.values()))
    info = {"nemo_version": config.get("nemo_version"), "frontend": features.frontend,
            "ignored_keys": ignored[:20], "source_file": path.name,
            "nemo_target": str(config.get("target", ""))}
    return model.eval(), info


def nemo_jasper_blocks(network: QuartzNetConfig) -> list[dict[str, Any]]:
    """The block table as NeMo's ConvASREncoder ``jasper`` list."""
    return [{"filters": b.filters, "repeat": b.repeat, "kernel": [b.kernel], "stride": [b.stride],
             "dilation": [b.dilation], "dropout": b.dropout, "residual": b.residual, "separable": b.separable,
             **({"residual_dense": True} if b.residual_dense else {})} for b in network.blocks]


def export_nemo(model: SpeechRecognizer, path: Path | str) -> None:
    """Writes a .nemo archive that NeMo's EncDecCTCModel.restore_from can load."""
    if not isinstance(model, SpeechRecognizer):
        raise NemoImportError("ensembles cannot be exported to .nemo: NeMo runs one network; export a member")
    if model.vocabulary.is_word_piece:
        # NeMo's EncDecCTCModel is character-only; its BPE models need a SentencePiece tokenizer.
        raise NemoImportError("word-piece models cannot be exported as a NeMo character model (.nemo)")
    if model.config.network.self_conditioning:
        # NeMo's ConvASREncoder has no self-conditioning heads; dropping them would change every output.
        raise NemoImportError("self-conditioned models cannot be exported to .nemo: NeMo's encoder has no "
                              "self-conditioning heads")
    feats, network, labels = model.config.features, model.config.network, list(model.vocabulary.labels)
    jasper = nemo_jasper_blocks(network)
    config = {
        "sample_rate": feats.sample_rate, "labels": labels,
        "nemo_version": "3.0.0" if feats.frontend == "nemo25" else "2.4.0",
        "target": "nemo.collections.asr.models.ctc_models.EncDecCTCModel",
        "preprocessor": {"_target_": "nemo.collections.asr.modules.AudioToMelSpectrogramPreprocessor",
                         "sample_rate": feats.sample_rate, "normalize": feats.normalize if feats.normalize != "none" else "None",
                         "window_size": feats.window_size_s, "window_stride": feats.window_stride_s, "window": "hann",
                         "features": feats.num_mels, "n_fft": feats.n_fft, "frame_splicing": 1, "dither": feats.dither,
                         "pad_to": feats.pad_to, "preemph": feats.preemph, "lowfreq": feats.lowfreq_hz,
                         "highfreq": feats.highfreq_hz, "mag_power": feats.mag_power,
                         "log_zero_guard_value": feats.log_zero_guard},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConvASREncoder", "feat_in": network.feat_in,
                    "activation": "relu", "conv_mask": True, "jasper": jasper},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": network.blocks[-1].filters,
                    "num_classes": len(labels), "vocabulary": labels},
    }
    mapping = nemo_key_map(network)
    state = {mapping[k]: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in mapping}
    weights = io.BytesIO()
    torch.save(state, weights)
    config_bytes = yaml.safe_dump(config, sort_keys=False).encode()
    with tarfile.open(path, "w:") as tar:
        for name, data in ((CONFIG_MEMBER, config_bytes), (WEIGHTS_MEMBER, weights.getvalue())):
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
