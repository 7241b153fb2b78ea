import torch

from assistant.evaluate import conll_spans
from assistant.models import MAX_CHARS, SLUModel, bio_viterbi, build_model, char_codes, collate

TAGS = ["O", "B-artist", "B-track", "I-artist", "I-track"]


def _logits(rows):
    return torch.log(torch.tensor([rows], dtype=torch.float32))


def test_viterbi_never_starts_or_switches_with_i():
    # argmax would give I-artist first and I-track after B-artist: both invalid BIO
    lg = _logits([[0.1, 0.3, 0.1, 0.4, 0.1], [0.1, 0.1, 0.1, 0.3, 0.4], [0.9, 0.025, 0.025, 0.025, 0.025]])
    seq = [TAGS[t] for t in bio_viterbi(lg, TAGS, [3])[0]]
    assert seq == ["B-artist", "I-artist", "O"]
    for i, t in enumerate(seq):
        if t.startswith("I-"):
            assert i > 0 and seq[i - 1][2:] == t[2:]


def test_viterbi_keeps_a_valid_argmax_and_respects_lengths():
    lg = _logits([[0.1, 0.1, 0.6, 0.1, 0.1], [0.1, 0.1, 0.1, 0.1, 0.6], [0.6, 0.1, 0.1, 0.1, 0.1]])
    assert bio_viterbi(lg, TAGS, [3]) == [[2, 4, 0]]
    assert bio_viterbi(lg, TAGS, [1]) == [[2]]
    assert bio_viterbi(lg.expand(2, -1, -1), TAGS, [0, 2]) == [[], [2, 4]]
    assert conll_spans([TAGS[t] for t in bio_viterbi(lg, TAGS, [3])[0]]) == {("track", 0, 2)}


def test_char_codes_are_bounded():
    c = char_codes("Beyoncé" + "x" * 40)
    assert len(c) == MAX_CHARS and min(c) >= 1 and max(c) <= 256


def test_char_cnn_model_runs_and_old_configs_build_without_it():
    torch.manual_seed(0)
    m = SLUModel(vocab_size=10, n_intents=3, n_tags=len(TAGS), char_dim=8)
    s = [{"ids": [2, 3], "wvec": torch.zeros(2, 384, dtype=torch.float16), "sent": torch.zeros(384),
          "chars": [char_codes("ab"), char_codes("xyz")], "intent": 1, "tags": [1, 3]},
         {"ids": [], "wvec": None, "sent": None, "mel": torch.zeros(64, 40), "intent": 0}]
    out = m(collate(s))
    assert out["outputs"]["tags"].shape == (2, 2, len(TAGS)) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert m.tokens.chars.conv.weight.grad is not None
    cfg = {"model": {"fusion": "attention", "dim": 32, "word_emb": 16, "modality_dropout": 0.2, "slot_weight": 1.0},
           "vocab": ["<pad>", "<unk>", "a", "b"], "intents": ["x", "y"], "tags": TAGS}
    old = build_model(cfg)  # a checkpoint config from before char_dim existed
    assert old.tokens.chars is None
    assert old(collate(s[:1]))["outputs"]["tags"].shape == (1, 2, len(TAGS))
