import pytest
import torch

from assistant.evaluate import conll_spans
from assistant.models import MAX_CHARS, ModelConfig, bio_viterbi, build_model, char_codes, collate

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


def test_fusion_model_with_token_head_trains_and_builds_without_char_cnn():
    from mmapps.model import FusionModel

    torch.manual_seed(0)
    m = build_model(ModelConfig(dim=32, word_emb=16, char_dim=8, vocab_size=10, n_intents=3, n_tags=len(TAGS),
                                modality_dropout=0.0))
    assert isinstance(m, FusionModel) and set(m.heads) == {"intent", "tags"}
    s = [{"ids": [2, 3], "wvec": torch.zeros(2, 384, dtype=torch.float16), "sent": torch.zeros(384),
          "chars": [char_codes("ab"), char_codes("xyz")], "intent": 1, "tags": [1, 3]},
         {"ids": [], "wvec": None, "sent": None, "mel": torch.zeros(64, 40), "intent": 0}]
    out = m(collate(s))
    assert out["outputs"]["tags"].shape == (2, 2, len(TAGS)) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert m.encoders["tokens"].chars.conv.weight.grad is not None
    # the audio-only sample carries no slot loss: its tag targets are masked by the token presence
    assert set(out["losses"]) == {"intent", "tags"}
    plain = build_model(ModelConfig(dim=32, word_emb=16, vocab_size=10, n_intents=2, n_tags=len(TAGS)))
    assert plain.encoders["tokens"].chars is None
    plain.eval()
    assert plain(collate(s[1:]))["outputs"]["tags"].shape == (1, 1, len(TAGS))  # audio only: zeros, no crash


def test_crf_slot_head_trains_keeps_bio_rules_and_survives_a_checkpoint(tmp_path):
    from assistant.models import decode_tags, set_tag_constraints
    from mmapps.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    cfg = ModelConfig(dim=32, word_emb=16, vocab_size=10, n_intents=2, n_tags=len(TAGS), modality_dropout=0.0,
                      crf=True)
    m = build_model(cfg)
    set_tag_constraints(m, TAGS)
    s = [{"ids": [2, 3, 4], "wvec": torch.zeros(3, 384, dtype=torch.float16), "sent": torch.zeros(384),
          "intent": 1, "tags": [1, 3, 0]},
         {"ids": [5, 6], "wvec": torch.zeros(2, 384, dtype=torch.float16), "sent": torch.zeros(384),
          "intent": 0, "tags": [2, 4]},
         {"ids": [], "wvec": None, "sent": None, "mel": torch.zeros(64, 40), "intent": 0}]  # no tokens: no CRF loss
    opt = torch.optim.Adam(m.parameters(), lr=0.02)
    first = None
    for _ in range(40):
        out = m(collate(s))
        first = first if first is not None else float(out["losses"]["tags"].detach())
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    assert float(out["losses"]["tags"].detach()) < 0.3 * first
    m.eval()
    scores = m(collate(s))["outputs"]["tags"]
    assert decode_tags(m, scores, TAGS, [3, 2, 0]) == [[1, 3, 0], [2, 4], []]
    # the rules hold whatever the emissions say: I-track may not follow B-artist nor start a sequence
    bad = torch.zeros(1, 2, len(TAGS))
    bad[0, 0, 4], bad[0, 1, 4] = 50.0, 50.0
    path = [TAGS[t] for t in decode_tags(m, bad, TAGS, [2])[0]]
    assert path[0] != "I-track" and not (path[0] == "B-artist" and path[1] == "I-track")
    # constraints are buffers: a model rebuilt from its config alone gets them back from the weights
    save_checkpoint(tmp_path / "m.pt", m, {"scenario": "assistant", "model": vars(cfg)}, {})
    again = build_model(cfg)
    again.load_state_dict(load_checkpoint(tmp_path / "m.pt")["state_dict"])
    assert torch.equal(again.heads["tags"].crf.trans_penalty, m.heads["tags"].crf.trans_penalty)
    assert again.heads["tags"].crf.trans_penalty.min() < -1.0


def test_finetuned_minilm_top_layers_start_equal_to_the_frozen_model(tmp_path):
    """With finetune_layers the word vectors come from the model's own copy of MiniLM's top layer(s): loaded with
    the pretrained weights they reproduce the frozen word vectors; they train at the scaled learning rate."""
    from assistant.models import TextEmbedder, load_minilm_layers
    from assistant.pipeline import featurize
    from mmapps.trainer import param_groups

    words = [["play", "jazz", "by", "miles", "davis"], ["weather", "in", "qwertzuiop", "tomorrow"]]
    frozen = featurize(words, {"play": 2}, cache_dir=tmp_path)
    states = featurize(words, {"play": 2}, cache_dir=tmp_path, top_layers=2)
    assert states[1]["first"].tolist()[0] == 1  # after [CLS]
    assert torch.equal(states[0]["wvec"], frozen[0]["wvec"])  # the frozen vectors ride along (slots-only tuning)
    assert states[1]["sub"].shape[0] > len(words[1]) + 2  # "qwertzuiop" has several subwords; [CLS] and [SEP]
    assert len(list(tmp_path.glob("minilm_*.pt"))) == 2  # cached apart
    cfg = ModelConfig(dim=32, word_emb=16, vocab_size=10, n_intents=2, n_tags=len(TAGS), finetune_layers=2,
                      finetune_lr_scale=0.1, modality_dropout=0.0)
    m = build_model(cfg).eval()
    enc = m.encoders["tokens"]
    load_minilm_layers(enc.top, TextEmbedder().model.state_dict())
    batch = collate([{**f, "intent": 1, "tags": [0] * len(f["ids"])} for f in states]
                    + [{"ids": [], "wvec": None, "sent": None, "mel": torch.zeros(64, 30), "intent": 0}])
    h = batch["tokens"]["sub"].float()
    for layer in enc.top:
        h = layer(h, batch["tokens"]["sub_mask"])
    for b, f in enumerate(frozen):
        n = len(words[b])
        ours = h[b, batch["tokens"]["first"][b, :n]]
        assert torch.allclose(ours, f["wvec"].float(), atol=0.03), (ours - f["wvec"].float()).abs().max()
    assert torch.isfinite(h[2]).all()  # the audio-only row has no subwords and stays finite
    m.train()
    out = m(batch)
    assert out["outputs"]["tags"].shape == (3, 5, len(TAGS)) and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert enc.top[0].query.weight.grad is not None
    groups = param_groups(m, 1e-3)
    top = {id(p) for p in enc.top.parameters()}
    assert [g["lr"] for g in groups] == [1e-3, pytest.approx(1e-4)]
    assert {id(p) for p in groups[1]["params"]} == top and not top & {id(p) for p in groups[0]["params"]}


def test_slots_only_finetuning_keeps_the_intent_path_on_frozen_word_vectors(tmp_path):
    """finetune_slots_only: the tuned MiniLM layers feed the slot sequence alone; the pooled intent vector reads
    the frozen word vectors, so the intent loss never reaches the tuned layers and changing them leaves it as is."""
    from assistant.pipeline import featurize

    words = [["play", "jazz", "by", "miles", "davis"], ["book", "a", "table", "for", "two"]]
    states = featurize(words, {"play": 2}, cache_dir=tmp_path, top_layers=1)
    cfg = ModelConfig(dim=32, word_emb=16, vocab_size=10, n_intents=2, n_tags=len(TAGS), finetune_layers=1,
                      finetune_slots_only=True, modality_dropout=0.0)
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    enc = m.encoders["tokens"]
    batch = collate([{**f, "intent": 1, "tags": [0] * len(f["ids"])} for f in states])
    before = enc(batch["tokens"])
    with torch.no_grad():
        enc.top[0].query.weight.add_(0.5)
    after = enc(batch["tokens"])
    assert torch.equal(before["pooled"], after["pooled"])
    assert not torch.allclose(before["sequence"], after["sequence"])
    out = m(batch)
    m.heads["intent"].loss(out["outputs"]["intent"], batch["targets"]["intent"]).backward()
    assert enc.top[0].query.weight.grad is None and enc.rnn.weight_ih_l0.grad is not None


def test_models_with_finetuned_layers_are_stored_in_float16_and_load_back():
    """compact_state halves a fine-tuned model's floating tensors (the 20 MB bundle budget) and leaves models
    without tuned MiniLM layers as they are; loading copies the values back into float32 parameters."""
    from assistant.train import compact_state

    cfg = ModelConfig(dim=32, word_emb=16, vocab_size=10, n_intents=2, n_tags=len(TAGS), finetune_layers=1,
                      finetune_slots_only=True)
    m = build_model(cfg)
    state = compact_state(m.state_dict())
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())
    again = build_model(cfg)
    again.load_state_dict(state)
    p = dict(again.named_parameters())["encoders.tokens.top.0.query.weight"]
    assert p.dtype == torch.float32
    assert torch.allclose(p, m.encoders["tokens"].top[0].query.weight, atol=1e-3)
    plain = build_model(ModelConfig(dim=32, word_emb=16, vocab_size=10, n_intents=2, n_tags=len(TAGS))).state_dict()
    assert compact_state(plain) is plain


def test_an_utterance_reads_the_same_alone_and_beside_a_longer_one():
    """The BiGRU runs packed: the batch's padding never reaches an utterance's states (unpacked, the backward
    direction started in the padding and a batch's longest query moved the others' intents)."""
    from assistant.models import TokenEncoder

    torch.manual_seed(0)
    enc = TokenEncoder(vocab_size=50, word_emb=8, out_dim=16, char_dim=4).eval()

    def batch(lengths, width):
        ids = torch.zeros(len(lengths), width, dtype=torch.long)
        for b, n in enumerate(lengths):
            ids[b, :n] = torch.arange(2, 2 + n) + b
        wvec = torch.randn(len(lengths), width, 384, generator=torch.Generator().manual_seed(1)) * (ids != 0)[..., None]
        chars = torch.randint(1, 200, (len(lengths), width, 6), generator=torch.Generator().manual_seed(2))
        return {"ids": ids, "wvec": wvec.half(), "chars": chars * (ids != 0)[..., None]}

    both = batch([3, 12], 12)
    alone = {k: v[:1, :3] for k, v in both.items()}
    with torch.no_grad():
        a, b = enc(alone), enc(both)
    torch.testing.assert_close(b["pooled"][0], a["pooled"][0])
    torch.testing.assert_close(b["sequence"][0, :3], a["sequence"][0])
    assert b["sequence"][0, 3:].abs().max() == 0  # padded positions carry nothing
