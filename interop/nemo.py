"""NeMo `.nemo` interop: import CTC QuartzNet/Jasper/Citrinet checkpoints as SpeechRecognizers, and export back.

Character models are ``EncDecCTCModel``; word-piece models (Citrinet) are ``EncDecCTCModelBPE``,
whose SentencePiece tokenizer travels inside the archive (interop.tokenizer).
"""

from __future__ import annotations

import io
import re
import tarfile
import warnings
from pathlib import Path
from typing import Any

import torch
import yaml

from model.errors import ASRError
from model.features import MelFeaturizerConfig
from model.network_config import BlockConfig, QuartzNetConfig
from model.presets import scaled_kernel
from model.recognizer import RecognizerConfig, SpeechRecognizer
from model.text import UNKNOWN_PIECE
from model.vocabulary import Vocabulary

from interop.tokenizer import MODEL_KEY, SPE_VOCAB_KEY, VOCAB_KEY, TokenizerError, build_tokenizer, read_pieces

CONFIG_MEMBER = "model_config.yaml"
WEIGHTS_MEMBER = "model_weights.ckpt"
# Archives bigger than this are refused before extraction: Jasper 10x5DR is ~1.3 GB.
_MAX_MEMBER_BYTES = 4 << 30
# A SentencePiece model of 1024 pieces is ~250 kB (mostly its normalisation tables).
_MAX_TOKENIZER_BYTES = 64 << 20
BPE_TARGET = "nemo.collections.asr.models.ctc_bpe_models.EncDecCTCModelBPE"
CHAR_TARGET = "nemo.collections.asr.models.ctc_models.EncDecCTCModel"


class NemoImportError(ASRError, ValueError):
    """A .nemo file we cannot read or a config we do not support; the message says which."""

    code = "nemo_import_refused"


# ---- archive and config reading ----


def _read_archive(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and the weights."""
    config, state, _ = _read_archive_parts(path)
    return config, state


def _read_archive_parts(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], bytes | None]:
    """The config, the weights and (for BPE models) the tokenizer's .model file."""
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
            try:
                config = yaml.safe_load(config_text)
            except yaml.YAMLError as exc:
                raise NemoImportError(f"{path}: invalid {CONFIG_MEMBER} ({' '.join(str(exc).split())})") from None
            tokenizer = _read_tokenizer(path, tar, members, config)
            weights_bytes = tar.extractfile(members[WEIGHTS_MEMBER]).read()
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as exc:
        raise NemoImportError(f"{path}: unreadable .nemo archive ({' '.join(str(exc).split())})") from None
    try:
        # weights_only: a .nemo from the internet must never be able to run code when loaded.
        with warnings.catch_warnings():  # old pickle protocols warn over several lines; we report one
            warnings.simplefilter("ignore")
            state = torch.load(io.BytesIO(weights_bytes), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types here (UnpicklingError, RuntimeError, ...)
        raise NemoImportError(f"{path}: cannot read {WEIGHTS_MEMBER} safely ({str(exc).splitlines()[0]})") from None
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise NemoImportError(f"{path}: unexpected .nemo contents")
    return config, state, tokenizer


def _read_tokenizer(path: Path, tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], config: Any
                    ) -> bytes | None:
    """The SentencePiece model a BPE config names (``model_path: nemo:<member>``), or None without a tokenizer."""
    section = config.get("tokenizer") if isinstance(config, dict) else None
    if not isinstance(section, dict):
        return None
    kind = str(section.get("type", "")).lower()
    _require(kind == "bpe", f"tokenizer type {kind or '(missing)'!r} (only bpe: SentencePiece; not wpe or agg)")
    named = Path(str(section.get(MODEL_KEY) or "").removeprefix("nemo:")).name
    member = members.get(named) or next((m for n, m in members.items() if n.endswith("tokenizer.model")), None)
    if member is None:
        raise NemoImportError(f"{path}: BPE model without its tokenizer (no {named or 'tokenizer.model'} inside)")
    if member.size > _MAX_TOKENIZER_BYTES:
        raise NemoImportError(f"{path}: {member.name} is implausibly large ({member.size} bytes)")
    return tar.extractfile(member).read()


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


def _network_config(config: dict[str, Any], pieces: tuple[str, ...] | None) -> tuple[QuartzNetConfig, Vocabulary]:
    enc = _params(config.get("encoder"))
    _require(enc["_target_"].endswith("ConvASREncoder"),
             f"encoder {enc['_target_'] or '(missing)'} (only ConvASREncoder: QuartzNet/Jasper)")
    _require(str(enc.get("activation", "relu")) == "relu", f"activation {enc.get('activation')!r} (relu only)")
    _require(enc.get("conv_mask", True) in (True, "true"), "conv_mask: false")
    _require(str(enc.get("normalization_mode", "batch")) == "batch", "normalization other than batch")
    encoder_residual_mode = str(enc.get("residual_mode", "add"))
    _require(encoder_residual_mode in _RESIDUAL_MODES, f"residual_mode {enc.get('residual_mode')!r}")
    _require(int(enc.get("frame_splicing", 1)) == 1, "encoder frame_splicing > 1")
    _require(not enc.get("quantize", False), "quantize: true (pytorch-quantization layers)")
    blocks = [_block_config(index, raw, encoder_residual_mode) for index, raw in enumerate(enc.get("jasper") or [])]
    _require(bool(blocks), "encoder has no jasper blocks")
    dec = _params(config.get("decoder"))
    _require(dec["_target_"].endswith("ConvASRDecoder"), f"decoder {dec['_target_'] or '(missing)'}")
    labels = dec.get("vocabulary") or config.get("labels")
    if pieces is not None:  # the tokenizer is the truth; the config's copy of its pieces must agree
        _require(not labels or tuple(str(label) for label in labels) == pieces,
                 "decoder vocabulary differs from the tokenizer's pieces")
        labels = pieces
    _require(bool(labels), "no vocabulary")
    labels = tuple(str(label) for label in labels)
    if pieces is None:
        _require(all(len(label) == 1 for label in labels), "multi-character labels (word pieces) without a tokenizer")
    _require(int(dec.get("num_classes", len(labels))) == len(labels), "decoder num_classes != vocabulary size")
    feat_in = int(enc.get("feat_in", 64))
    vocabulary = Vocabulary(labels)
    _require(pieces is None or vocabulary.is_word_piece, "a tokenizer without word-start ('\u2581') pieces")
    return QuartzNetConfig(tuple(blocks), num_labels=len(labels), feat_in=feat_in, name="nemo_import"), vocabulary


# "stride_add" strides the residual 1x1 conv with its block; with stride 1 the two are the same.
_RESIDUAL_MODES = ("add", "stride_add")
# NeMo accepts these and, in 3.0.0, never reads them: its SE never interpolates.
_SE_INTERPOLATION_MODES = ("nearest", "linear", "bilinear", "bicubic", "trilinear", "area")


def _block_config(index: int, raw: Any, encoder_residual_mode: str) -> BlockConfig:
    """One entry of ConvASREncoder's ``jasper`` list as a BlockConfig; refuses what the model cannot build."""
    where = f"encoder block {index}"
    _require(isinstance(raw, dict), f"{where} is not a mapping")
    _require(int(raw.get("groups", 1)) == 1, f"{where}: grouped convs (groups > 1)")
    _require(int(raw.get("heads", -1)) == -1, f"{where}: heads")
    _require(int(raw.get("future_context", -1)) == -1, f"{where}: future_context (asymmetric padding)")
    residual_mode = str(raw.get("residual_mode", encoder_residual_mode))
    _require(residual_mode in _RESIDUAL_MODES, f"{where}: residual_mode {residual_mode!r}")
    interpolation = str(raw.get("se_interpolation_mode", "nearest"))
    _require(interpolation in _SE_INTERPOLATION_MODES, f"{where}: se_interpolation_mode {interpolation!r}")

    def first(key: str, default: int = 1) -> int:
        value = raw.get(key, [default])
        return int(value[0] if isinstance(value, (list, tuple)) else value)

    repeat, stride = int(raw.get("repeat", 1)), first("stride")
    stride_last = bool(raw.get("stride_last", False))
    residual = bool(raw.get("residual", False))
    # NeMo strides every sub-block then (stride ** repeat); our blocks stride once.
    _require(stride == 1 or repeat == 1 or stride_last, f"{where}: stride on every repeated sub-block "
                                                       "(stride > 1, repeat > 1, no stride_last)")
    _require(stride == 1 or not residual or residual_mode == "stride_add",
             f"{where}: a strided residual block with residual_mode 'add' (NeMo cannot add those either)")
    return BlockConfig(filters=int(raw["filters"]), repeat=repeat,
                       kernel=scaled_kernel(first("kernel"), float(raw.get("kernel_size_factor", 1.0))),
                       stride=stride, dilation=first("dilation"), dropout=float(raw.get("dropout", 0.0)),
                       residual=residual, separable=bool(raw.get("separable", False)),
                       residual_dense=bool(raw.get("residual_dense", False)), stride_last=stride_last and repeat > 1,
                       se=bool(raw.get("se", False)),
                       # ConvASREncoder's default ratio (8), not JasperBlock's (16): the encoder passes its own.
                       se_reduction_ratio=int(raw.get("se_reduction_ratio", 8)),
                       se_context_size=int(raw.get("se_context_size", -1)))


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
        if block.se:  # right after the last sub-block's BatchNorm (no ReLU/Dropout slots follow it)
            se = stride * (block.repeat - 1) + (3 if block.separable else 2)
            mapping[f"{ours}.se.squeeze.weight"] = f"{theirs}.mconv.{se}.fc.0.weight"
            mapping[f"{ours}.se.excite.weight"] = f"{theirs}.mconv.{se}.fc.2.weight"
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
    """Reads a CTC QuartzNet/Jasper (characters) or Citrinet (SentencePiece BPE) `.nemo` file into a
    SpeechRecognizer (eval mode).

    Args:
        path: the .nemo archive (tar or tar.gz with model_config.yaml and model_weights.ckpt, and for
            BPE models the tokenizer .model the config's ``tokenizer.model_path`` names).
        frontend: "nemo25" or "nemo24"; None picks from the config's nemo_version (absent: nemo24).

    Returns:
        The model and an info dict (nemo_version, frontend, ignored keys) for the registry metadata.

    Raises:
        NemoImportError: unreadable archive or unsupported config, naming what is unsupported.
    """
    path = Path(path)
    config, state, tokenizer = _read_archive_parts(path)
    try:
        pieces = read_pieces(tokenizer) if tokenizer is not None else None
    except TokenizerError as exc:
        raise NemoImportError(f"unsupported NeMo config: {exc}") from None
    try:
        features = _features_config(config, frontend)
        network, vocabulary = _network_config(config, pieces)
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
            "nemo_target": str(config.get("target", "")), "tokenizer": "bpe" if pieces is not None else None}
    return model.eval(), info


def nemo_jasper_blocks(network: QuartzNetConfig) -> list[dict[str, Any]]:
    """The block table as NeMo's ConvASREncoder ``jasper`` list."""
    return [_nemo_block(b) for b in network.blocks]


def _nemo_block(b: BlockConfig) -> dict[str, Any]:
    if b.stride > 1 and b.repeat > 1 and not b.stride_last:
        # NeMo would stride every sub-block; ours strides only the first.
        raise NemoImportError("a block striding its first of several sub-blocks has no NeMo equivalent")
    row = {"filters": b.filters, "repeat": b.repeat, "kernel": [b.kernel], "stride": [b.stride],
           "dilation": [b.dilation], "dropout": b.dropout, "residual": b.residual, "separable": b.separable}
    if b.residual_dense:
        row["residual_dense"] = True
    if b.stride_last:
        row["stride_last"] = True
    if b.residual and b.stride > 1:
        row["residual_mode"] = "stride_add"
    if b.se:
        row.update(se=True, se_reduction_ratio=b.se_reduction_ratio, se_context_size=b.se_context_size)
    return row


# The added <unk> class's logit sits this far below zero with zero weights: its softmax share is exp(-1e4), which is
# 0 in every float format, so the other classes' log-probs are unchanged and it is never emitted.
UNKNOWN_CLASS_BIAS = -1.0e4


def _with_unknown_class(state: dict[str, torch.Tensor], weight_key: str, bias_key: str) -> dict[str, torch.Tensor]:
    """The decoder with one more class just before the blank (the last class), for an appended <unk> piece."""
    weight, bias = state[weight_key], state[bias_key]
    return {**state,
            weight_key: torch.cat([weight[:-1], torch.zeros_like(weight[:1]), weight[-1:]]),
            bias_key: torch.cat([bias[:-1], torch.full_like(bias[:1], UNKNOWN_CLASS_BIAS), bias[-1:]])}


def export_nemo(model: SpeechRecognizer, path: Path | str) -> None:
    """Writes a .nemo archive that NeMo's restore_from can load: an EncDecCTCModel for characters, an
    EncDecCTCModelBPE with a SentencePiece tokenizer rebuilt from the pieces (interop.tokenizer) for a
    SentencePiece vocabulary."""
    if not isinstance(model, SpeechRecognizer):
        raise NemoImportError("ensembles cannot be exported to .nemo: NeMo runs one network; export a member")
    artifacts: dict[str, bytes] = {}
    labels = list(model.vocabulary.labels)
    # Every SentencePiece vocabulary has <unk>; pieces trained without one (the starter's) gain it as one
    # more class that never wins (see _with_unknown_class), so NeMo's tokenizer and decoder line up.
    add_unknown = model.vocabulary.is_word_piece and UNKNOWN_PIECE not in labels
    if add_unknown:
        labels.append(UNKNOWN_PIECE)
    if model.vocabulary.is_word_piece:
        # NeMo's EncDecCTCModel is character-only; its BPE model needs a SentencePiece tokenizer,
        # which a SentencePiece piece list gives back.
        try:
            artifacts = build_tokenizer(tuple(labels))
        except TokenizerError as exc:
            raise NemoImportError(f"word-piece models cannot be exported as a NeMo character model (.nemo), "
                                  f"and this one not as a BPE model either: {exc}") from None
    if model.config.network.self_conditioning:
        # NeMo's ConvASREncoder has no self-conditioning heads; dropping them would change every output.
        raise NemoImportError("self-conditioned models cannot be exported to .nemo: NeMo's encoder has no "
                              "self-conditioning heads")
    feats, network = model.config.features, model.config.network
    jasper = nemo_jasper_blocks(network)
    config = {
        "sample_rate": feats.sample_rate, "labels": labels,
        "nemo_version": "3.0.0" if feats.frontend == "nemo25" else "2.4.0",
        "target": BPE_TARGET if artifacts else CHAR_TARGET,
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
    members: dict[str, bytes] = {}
    if artifacts:
        del config["labels"]  # BPE models keep their vocabulary in the tokenizer (and the decoder's copy)
        # NeMo resolves "nemo:<member>" to that member of the archive when it restores the model.
        names = {MODEL_KEY: "tokenizer.model", VOCAB_KEY: "vocab.txt", SPE_VOCAB_KEY: "tokenizer.vocab"}
        config["tokenizer"] = {"dir": None, "type": "bpe", **{key: f"nemo:{names[key]}" for key in names}}
        members = {names[key]: data for key, data in artifacts.items()}
    mapping = nemo_key_map(network)
    state = {mapping[k]: v.detach().cpu().contiguous() for k, v in model.state_dict().items() if k in mapping}
    if add_unknown:
        state = _with_unknown_class(state, mapping["network.decoder.weight"], mapping["network.decoder.bias"])
    weights = io.BytesIO()
    torch.save(state, weights)
    config_bytes = yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode()
    members = {CONFIG_MEMBER: config_bytes, WEIGHTS_MEMBER: weights.getvalue(), **members}
    with tarfile.open(path, "w:") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"./{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
