"""SentencePiece tokenizers inside `.nemo` archives: the piece list on import, a rebuilt tokenizer on export.

A NeMo BPE model (``EncDecCTCModelBPE``) emits one CTC column per SentencePiece piece, in the
tokenizer's id order, plus the blank. Decoding only needs that piece list, so the registry stores
the pieces as the model's vocabulary and nothing else of the tokenizer. On export the tokenizer
is rebuilt from the pieces: a BPE tokenizer's scores are its pieces' merge order (0, -1, -2, ...
by id), which the order alone gives back.
"""

from __future__ import annotations

import io

from model.errors import ASRError
from model.text import UNKNOWN_PIECE

# Tokenizer files NeMo registers as artifacts of a BPE model, by their config key.
MODEL_KEY, VOCAB_KEY, SPE_VOCAB_KEY = "model_path", "vocab_path", "spe_tokenizer_vocab"


class TokenizerError(ASRError, ValueError):
    """A tokenizer we cannot read or rebuild; the message says why."""

    code = "bad_tokenizer"


def read_pieces(model_bytes: bytes) -> tuple[str, ...]:
    """The pieces of a serialized SentencePiece model, in id order.

    Raises:
        TokenizerError: not a SentencePiece model, or one whose pieces cannot be CTC labels here
            (byte-fallback pieces, pieces with spaces or a "▁" inside).
    """
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model_bytes)
    except (RuntimeError, OSError, TypeError) as exc:
        raise TokenizerError(f"not a SentencePiece model ({' '.join(str(exc).split())})") from None
    size = processor.get_piece_size()
    if any(processor.is_byte(i) for i in range(size)):
        raise TokenizerError("byte-fallback SentencePiece tokenizers (<0x..> pieces)")
    return tuple(processor.id_to_piece(i) for i in range(size))


def build_tokenizer(pieces: tuple[str, ...]) -> dict[str, bytes]:
    """A SentencePiece BPE model with exactly ``pieces`` (ids in order), plus NeMo's two vocabulary listings.

    The text normaliser is SentencePiece's NFKC, with case folding when no piece has an upper-case
    letter (NeMo's ``do_lower_case`` choice): the pieces alone do not record which the original used.

    Returns:
        {config key: file bytes} for ``model_path``, ``vocab_path`` and ``spe_tokenizer_vocab``.

    Raises:
        TokenizerError: the pieces lack ``<unk>``, which every SentencePiece model has.
    """
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    if UNKNOWN_PIECE not in pieces:
        raise TokenizerError(f"word pieces without '{UNKNOWN_PIECE}' are not a SentencePiece vocabulary")
    lower = not any(c.isupper() for piece in pieces for c in piece)
    # A throwaway model made by SentencePiece's own trainer carries the specs (normaliser tables
    # included); only its pieces are replaced.
    written = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(["a b", "ab"]), model_writer=written, vocab_size=4, model_type="bpe",
        hard_vocab_limit=False, bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2,
        normalization_rule_name="nmt_nfkc_cf" if lower else "nmt_nfkc")
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(written.getvalue())
    del proto.pieces[:]
    kind = sentencepiece_model_pb2.ModelProto.SentencePiece
    rank = 0
    for piece in pieces:
        if piece == UNKNOWN_PIECE:
            proto.pieces.add(piece=piece, score=0.0, type=kind.UNKNOWN)
        else:
            proto.pieces.add(piece=piece, score=-float(rank), type=kind.NORMAL)
            rank += 1
    proto.trainer_spec.vocab_size = len(pieces)
    proto.trainer_spec.unk_id = pieces.index(UNKNOWN_PIECE)
    model_bytes = proto.SerializeToString()
    if read_pieces(model_bytes) != tuple(pieces):  # the rebuilt model must load and give the same ids
        raise TokenizerError("rebuilt SentencePiece model does not reproduce the vocabulary")
    spe_vocab = "".join(f"{p.piece}\t{p.score:g}\n" for p in proto.pieces)
    # NeMo's vocab.txt: word-initial pieces without "▁", continuations as "##piece", no <unk>.
    listed = [p[1:] or p if p.startswith("\u2581") else f"##{p}" for p in pieces if p != UNKNOWN_PIECE]
    return {MODEL_KEY: model_bytes, VOCAB_KEY: "".join(f"{t}\n" for t in listed).encode(),
            SPE_VOCAB_KEY: spe_vocab.encode()}
