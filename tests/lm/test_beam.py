"""BeamDecoder: pyctcdecode beam search with KenLM fusion and hotwords on synthetic CTC output."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from lm.beam import BeamDecoder, BeamHypothesis
from tests.lm.helpers import LABELS, greedy, make_log_probs, spell

# "ye?" where the last letter is acoustically "z" (0.55) slightly more than "s" (0.40).
YEZ = spell([{"y": 0.9}, {"e": 0.9}, {"z": 0.55, "s": 0.40}])
# "i have t?o cats" where "u" (0.55) narrowly beats "w" (0.40).
SPACE = [{" ": 0.9}]
I_HAVE_TUO_CATS = spell(
    [{"i": 0.9}] + SPACE + [{c: 0.9} for c in "have"] + SPACE
    + [{"t": 0.9}, {"u": 0.55, "w": 0.40}, {"o": 0.9}] + SPACE + [{c: 0.9} for c in "cats"]
)


@pytest.fixture(scope="module")
def lm_decoder(tiny_lm) -> BeamDecoder:
    return BeamDecoder(LABELS, tiny_lm.binary_path, tiny_lm.unigrams, alpha=0.5, beta=1.0)


def test_greedy_is_fooled_but_lm_picks_the_in_vocabulary_word(lm_decoder: BeamDecoder) -> None:
    log_probs = make_log_probs(YEZ)
    assert greedy(log_probs) == "yez"
    assert BeamDecoder(LABELS).decode(log_probs)[0].text == "yez"  # no LM: acoustics win
    best = lm_decoder.decode(log_probs)[0]
    assert isinstance(best, BeamHypothesis)
    assert best.text == "yes"
    assert best.logit_score < 0 and best.score == pytest.approx(best.logit_score + best.lm_score)


def test_lm_fixes_a_word_in_context(lm_decoder: BeamDecoder) -> None:
    log_probs = make_log_probs(I_HAVE_TUO_CATS)
    assert greedy(log_probs) == "i have tuo cats"
    best = lm_decoder.decode(log_probs, beam_width=32)[0]
    assert best.text == "i have two cats"
    assert [w for w, _, _ in best.words] == ["i", "have", "two", "cats"]
    starts = [s for _, s, _ in best.words]
    assert starts == sorted(starts)
    for _, start, end in best.words:
        assert 0 <= start < end <= len(log_probs)


def test_word_frames_point_at_the_letters() -> None:
    log_probs = make_log_probs(spell([{"a": 0.9}, {" ": 0.9}, {"b": 0.9}, {"c": 0.9}]))
    best = BeamDecoder(LABELS).decode(log_probs)[0]
    # frames: a=0, blank, space=2, blank, b=4, blank, c=6, blank -> end frames are exclusive
    assert best.words == (("a", 0, 1), ("bc", 4, 7))


def test_hotword_overrides_the_lm(lm_decoder: BeamDecoder) -> None:
    log_probs = make_log_probs(YEZ)
    assert lm_decoder.decode(log_probs)[0].text == "yes"
    boosted = lm_decoder.decode(log_probs, hotwords=["yez"], hotword_weight=10.0)[0]
    assert boosted.text == "yez"
    # and the decoder is unchanged for the next call
    assert lm_decoder.decode(log_probs)[0].text == "yes"


def test_hotword_without_lm() -> None:
    decoder = BeamDecoder(LABELS)
    log_probs = make_log_probs(YEZ)
    assert decoder.decode(log_probs)[0].text == "yez"
    best = decoder.decode(log_probs, hotwords=["yes"])[0]
    assert best.text == "yes" and best.lm_score == pytest.approx(10.0)
    assert decoder.decode(log_probs, hotwords=["yes"], hotword_weight=0.1)[0].text == "yez"


def test_num_best_returns_ranked_alternatives() -> None:
    hyps = BeamDecoder(LABELS).decode(make_log_probs(YEZ), num_best=3)
    assert [h.text for h in hyps[:2]] == ["yez", "yes"]
    assert len(hyps) <= 3
    scores = [h.score for h in hyps]
    assert scores == sorted(scores, reverse=True)


def test_per_call_weights_do_not_leak(lm_decoder: BeamDecoder) -> None:
    log_probs = make_log_probs(YEZ)
    default = lm_decoder.decode(log_probs)[0]
    heavier = lm_decoder.decode(log_probs, alpha=1.0, beta=0.0)[0]
    assert heavier.text == "yes"
    assert heavier.lm_score != pytest.approx(default.lm_score)
    assert lm_decoder.decode(log_probs)[0] == default


def test_concurrent_decodes_match_sequential(lm_decoder: BeamDecoder) -> None:
    inputs = [make_log_probs(YEZ), make_log_probs(I_HAVE_TUO_CATS)]
    alphas = [0.3, 0.5, 0.8, 1.2]
    expected = {(i, a): lm_decoder.decode(x, alpha=a) for i, x in enumerate(inputs) for a in alphas}
    errors: list[BaseException] = []
    results: dict = {}

    def work(seed: int) -> None:
        try:
            rng = np.random.default_rng(seed)
            for _ in range(20):
                i, a = int(rng.integers(len(inputs))), float(rng.choice(alphas))
                got = lm_decoder.decode(inputs[i], alpha=a, hotwords=["cats"] if seed % 2 else ())
                if not seed % 2:
                    results.setdefault((i, a), []).append(got)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for key, outs in results.items():
        assert all(out == expected[key] for out in outs)


def test_evicted_weights_keep_working(tiny_lm) -> None:
    decoder = BeamDecoder(LABELS, tiny_lm.binary_path, tiny_lm.unigrams, max_cached_weights=2)
    log_probs = make_log_probs(YEZ)
    for alpha in (0.1, 0.2, 0.3, 0.4, 0.5):
        assert decoder.decode(log_probs, alpha=alpha)[0].text in {"yes", "yez"}
    assert len(decoder._decoders) == 2


def test_blank_is_the_last_column_even_with_lookalike_labels() -> None:
    # pyctcdecode's own label heuristics would treat "_" as the blank and "|" as a space.
    labels = [" ", "a", "_", "|"]
    decoder = BeamDecoder(labels)
    frames = [{"a": 0.9}, {"": 0.9}, {"_": 0.9}, {"": 0.9}, {"|": 0.9}]
    rows = []
    for dist in frames:
        row = np.full(len(labels) + 1, 1e-3)
        for c, p in dist.items():
            row[len(labels) if c == "" else labels.index(c)] = p
        rows.append(np.log(row / row.sum()))
    assert decoder.decode(np.asarray(rows, dtype=np.float32))[0].text == "a_|"


def test_empty_input_and_bad_shapes() -> None:
    decoder = BeamDecoder(LABELS)
    assert decoder.decode(np.zeros((0, len(LABELS) + 1), np.float32))[0].text == ""
    with pytest.raises(ValueError, match="shape"):
        decoder.decode(np.zeros((5, len(LABELS)), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        decoder.decode(np.full((2, len(LABELS) + 1), np.nan, np.float32))
    with pytest.raises(ValueError, match="word separator"):
        BeamDecoder(list("abc"))
    with pytest.raises(ValueError, match="duplicate"):
        BeamDecoder(list(" aa"))


def test_minus_inf_log_probs_are_accepted() -> None:
    log_probs = make_log_probs(YEZ)
    log_probs[log_probs < -8] = -np.inf
    assert BeamDecoder(LABELS).decode(log_probs)[0].text == "yez"


def _piece_log_probs(frames: list[dict[int, float]], num_labels: int) -> np.ndarray:
    """Log-probs (T, num_labels + 1) from per-frame {label index: prob}; the rest of each frame goes to the blank."""
    rows = []
    for dist in frames:
        r = np.full(num_labels + 1, 1e-4)
        for k, p in dist.items():
            r[k] = p
        r[num_labels] += max(0.0, 1.0 - r.sum())
        rows.append(np.log(r / r.sum()))
    return np.asarray(rows, dtype=np.float32)


def test_word_pieces_decode_as_words_and_the_lm_still_fuses(lm_decoder: BeamDecoder, tiny_lm) -> None:
    # Whole-word pieces plus spelling letters; "▁tuo" (0.55) narrowly beats "▁two" (0.40).
    labels = ["\u2581i", "\u2581have", "\u2581two", "\u2581tuo", "\u2581c", "a", "t", "s"]

    frames = [{0: 0.9}, {}, {1: 0.9}, {}, {3: 0.55, 2: 0.40}, {}, {4: 0.9}, {5: 0.9}, {6: 0.9}, {7: 0.9}]
    log_probs = _piece_log_probs(frames, len(labels))
    assert BeamDecoder(labels).decode(log_probs)[0].text == "i have tuo cats"
    fused = BeamDecoder(labels, tiny_lm.binary_path, tiny_lm.unigrams, alpha=0.5, beta=1.0).decode(log_probs)[0]
    assert fused.text == "i have two cats"
    assert [w for w, _, _ in fused.words] == ["i", "have", "two", "cats"]


def test_sentencepiece_pieces_build_words_and_the_lm_fuses(tiny_lm) -> None:
    # A NeMo BPE vocabulary: <unk> first, subword pieces, a bare "▁", single letters.
    labels = ["<unk>", "\u2581ha", "ve", "\u2581tw", "\u2581tu", "o", "\u2581", "c", "ats", "\u2581i"]

    # i | ha ve | tu (0.55) or tw (0.40), o | ▁ c ats | <unk>
    frames = [{9: 0.9}, {}, {1: 0.9}, {2: 0.9}, {}, {4: 0.55, 3: 0.40}, {5: 0.9}, {}, {6: 0.9}, {7: 0.9},
              {8: 0.9}, {}, {0: 0.9}]
    log_probs = _piece_log_probs(frames, len(labels))
    plain = BeamDecoder(labels).decode(log_probs)[0]
    assert plain.text == "i have tuo cats \u2047"  # <unk> is its own word, shown as sentencepiece shows it
    fused = BeamDecoder(labels, tiny_lm.binary_path, tiny_lm.unigrams, alpha=0.5, beta=1.0).decode(log_probs)[0]
    assert fused.text.startswith("i have two cats")
    assert [w for w, _, _ in fused.words][:4] == ["i", "have", "two", "cats"]


def _delayed(log_probs: np.ndarray) -> np.ndarray:
    """The same output one frame later, as a second, independently trained model might emit it."""
    return np.concatenate([make_log_probs([{"": 0.95}]), log_probs[:-1]])


def test_ensemble_ranks_the_members_candidates_by_mean_likelihood_plus_lm(lm_decoder: BeamDecoder) -> None:
    from model.rescoring import ensemble_log_likelihood
    from model.vocabulary import Vocabulary

    says_yez = make_log_probs(YEZ + [{"": 0.95}])
    says_yes = _delayed(make_log_probs(spell([{"y": 0.9}, {"e": 0.9}, {"s": 0.5, "z": 0.45}]) + [{"": 0.95}]))
    assert (greedy(says_yez), greedy(says_yes)) == ("yez", "yes")
    ensemble = np.stack([says_yez, says_yes], axis=1)
    plain = BeamDecoder(LABELS).decode(ensemble, num_best=5)
    texts = [h.text for h in plain]
    assert len(texts) == len(set(texts)) and {"yez", "yes"} <= set(texts)
    vocabulary = Vocabulary(LABELS)
    for hyp in plain:
        assert hyp.logit_score == pytest.approx(ensemble_log_likelihood(ensemble, hyp.text, vocabulary), abs=1e-4)
        assert hyp.score == pytest.approx(hyp.logit_score)  # no LM, no hotwords
    assert [h.score for h in plain] == sorted((h.score for h in plain), reverse=True)
    assert plain[0].text == "yez"  # z's evidence (0.55 + 0.45) outweighs s's (0.40 + 0.50)
    fused = lm_decoder.decode(ensemble, num_best=2)
    assert fused[0].text == "yes" and fused[0].score == pytest.approx(fused[0].logit_score + fused[0].lm_score)
    # Word frames come from a member that produced the text (here: both; member 0 first).
    assert fused[0].words[0][0] == "yes"


def test_ensemble_shape_is_checked() -> None:
    with pytest.raises(ValueError, match="views"):
        BeamDecoder(LABELS).decode(np.zeros((4, 2, len(LABELS)), dtype=np.float32))
