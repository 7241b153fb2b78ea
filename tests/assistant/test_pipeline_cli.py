import json

import numpy as np
import pytest
import soundfile as sf
import torch
from typer.testing import CliRunner

from mmapps.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _stderr(r):
    try:
        return r.stderr
    except ValueError:  # older click mixes the streams
        return r.output


def test_tiny_training_learns_and_reloads(tiny_model, tiny_manifest):
    from assistant import Pipeline

    pipe = Pipeline.from_checkpoint(tiny_model)
    assert set(pipe.intents) == {"PlayMusic", "GetWeather"}
    r = pipe.understand(text="what is the weather in madrid")
    assert r["intent"] == "GetWeather" and r["transcript"] == "what is the weather in madrid" and r["rtf"] is None
    r = pipe.understand(text="play blues by adele")
    assert r["intent"] == "PlayMusic"
    assert set(r) >= {"transcript", "intent", "confidence", "slots", "out_of_scope", "reply", "rtf"}
    assert 0.0 <= r["confidence"] <= 1.0


def test_evaluate_cli_json(tiny_model, tiny_manifest):
    r = _run("assistant", "evaluate", tiny_manifest, "--model", tiny_model, "--json")
    assert r.exit_code == 0, _stderr(r)
    j = json.loads(r.stdout.strip().splitlines()[-1])
    assert j["n"] == 60 and j["intent_accuracy"] >= 0.9 and 0.0 <= j["slot_f1"] <= 1.0
    assert "sentence_accuracy" in j and "wer" not in j


def test_understand_audio_and_text(tiny_model, shared_data):
    wav = sorted((shared_data / "assistant/speech_real/pocketsphinx/cards").glob("*.wav"))[0]
    r = _run("assistant", "understand", "--audio", wav, "--text", "ten of clubs", "--model", tiny_model, "--json")
    assert r.exit_code == 0, _stderr(r)
    j = json.loads(r.stdout)
    assert isinstance(j["transcript"], str) and j["intent"] in ("PlayMusic", "GetWeather")
    assert j["rtf"] > 0 and j["words"] == sorted(j["words"], key=lambda w: w["start"])
    assert j["hypotheses"] == []  # typed text decides: no ASR alternatives were weighed
    r = _run("assistant", "understand", "--audio", wav, "--model", tiny_model, "--json")
    j = json.loads(r.stdout)
    assert r.exit_code == 0 and j["hypotheses"][0]["transcript"] == j["transcript"]
    assert all(0 < h["posterior"] <= 1 for h in j["hypotheses"])


@pytest.mark.parametrize("case", ["empty", "silent", "notaudio", "none", "longtext", "emptytext", "missing"])
def test_bad_input_one_error_line_exit_2(case, tmp_path, tiny_model):
    wav = tmp_path / "in.wav"
    args = ["assistant", "understand", "--json", "--model", tiny_model]
    if case == "empty":
        wav.write_bytes(b"")
        args += ["--audio", wav]
    elif case == "silent":
        sf.write(wav, np.zeros(16000), 16000)
        args += ["--audio", wav]
    elif case == "notaudio":
        wav.write_text("hello, I am a text file")
        args += ["--audio", wav]
    elif case == "longtext":
        args += ["--text", "play " * 300]
    elif case == "emptytext":
        args += ["--text", "  "]
    elif case == "missing":
        args += ["--audio", tmp_path / "nope.wav"]
    r = _run(*args)
    err = _stderr(r).strip().splitlines()
    assert r.exit_code == 2, r.output
    assert len(err) == 1 and err[0].startswith("error:"), err
    if case in ("empty", "silent", "notaudio"):
        assert "in.wav" in err[0]
    assert r.stdout.strip() == ""


def test_bad_checkpoint_is_a_clear_error(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    r = _run("assistant", "understand", "--text", "hello", "--model", bad)
    assert r.exit_code == 2 and "model.pt" in _stderr(r)


def test_train_refuses_bad_fusion(tiny_manifest, tmp_path):
    out = tmp_path / "m.pt"
    r = _run("assistant", "train", tiny_manifest, "--out", out, "--fusion", "concatt")
    assert r.exit_code == 2 and "concat" in _stderr(r)
    assert not out.exists()


def test_reply_templates():
    from assistant.pipeline import make_reply

    assert make_reply("PlayMusic", {"track": "so what", "artist": "miles davis", "service": "spotify"}) == \
        "Playing so what by miles davis on spotify"
    assert make_reply("PlayMusic", {"artist": "miles davis"}) == "Playing by miles davis"
    assert make_reply("BookRestaurant", {"party_size_number": "two", "timeRange": "tonight"}) == \
        "Booking a table for two tonight"
    assert make_reply("myIntent", {"a": "b"}) == "OK: myIntent (a=b)"
    assert make_reply("oos", {}) == "Sorry, I can't help with that."


def test_chat_reads_lines_until_quit(tiny_model):
    r = runner.invoke(app, ["assistant", "chat", "--model", str(tiny_model)],
                      input="what is the weather in paris\n\nquit\nplay jazz by adele\n")
    assert r.exit_code == 0
    lines = [l for l in r.stdout.splitlines() if l.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("[GetWeather")  # stops at 'quit'


def test_tune_threshold_respects_in_scope_floor():
    import numpy as np

    from assistant.train import tune_threshold

    # class 2 = oos; in-scope samples are confident, oos samples are not
    probs = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.5, 0.3, 0.2], [0.4, 0.4, 0.2]])
    y = np.array([0, 1, 2, 2])
    t = tune_threshold(probs, y, 2)
    assert 0.5 < t <= 0.9  # rejects both oos samples and keeps both in-scope ones
    assert tune_threshold(probs, np.array([0, 1, 0, 1]), 2) == 0.0  # no oos examples: no threshold


def test_tune_threshold_stops_at_the_target_recall():
    import numpy as np

    from assistant.train import tune_threshold

    # 10 oos samples with in-scope confidences 0.1 .. 1.0 (step 0.1), 10 confident in-scope samples
    oos_conf = np.linspace(0.1, 1.0, 10)
    probs = np.zeros((20, 3))
    probs[:10, 0], probs[:10, 2] = oos_conf, 1 - oos_conf
    probs[10:, 1], probs[10:, 2] = 0.995, 0.005
    y = np.array([2] * 10 + [1] * 10)
    t = tune_threshold(probs, y, 2, target_recall=0.5)
    assert 0.5 < t <= 0.51 + 1e-9  # the lowest threshold rejecting 5 of 10 (confidences 0.1 .. 0.5)
    # The old rule: the most oos rejected (9 of 10; the one at confidence 1.0 never is), i.e. threshold 0.91.
    assert 0.9 < tune_threshold(probs, y, 2, target_recall=None) <= 0.91 + 1e-9
    assert 0.9 < tune_threshold(probs, y, 2, target_recall=0.95) <= 0.91 + 1e-9  # unreachable: the old rule
    # Only the rows in recall_on count for the recall (oos_val, not the validation split's easier oos rows):
    # add 10 oos rows the oos class already rejects; counted, they would meet 0.5 recall at threshold 0.
    easy = np.tile([0.0, 0.0, 1.0], (10, 1))
    probs2, y2 = np.vstack([probs, easy]), np.concatenate([y, [2] * 10])
    assert tune_threshold(probs2, y2, 2, target_recall=0.5) == 0.0
    recall_on = np.arange(30) < 10
    assert 0.5 < tune_threshold(probs2, y2, 2, target_recall=0.5, recall_on=recall_on) <= 0.51 + 1e-9


def test_retune_threshold_rewrites_checkpoint(tiny_model, tiny_manifest, tmp_path):
    import shutil

    from assistant.train import retune_threshold
    from mmapps.checkpoint import load_checkpoint

    ck = tmp_path / "m.pt"
    shutil.copy(tiny_model, ck)
    assert retune_threshold(ck, [tiny_manifest]) == 0.0  # the tiny data has no oos class
    meta = load_checkpoint(ck)["meta"]
    assert meta["oos_threshold"] == 0.0 and meta["oos_tuned_on"] == "typed validation split"


def test_unsure_asr_is_asked_to_repeat(tiny_model):
    from assistant import Pipeline
    from assistant.pipeline import REPEAT_REPLY

    pipe = Pipeline.from_checkpoint(tiny_model)
    sure, unsure = pipe.predict([["play", "jazz", "by", "adele"]] * 2, asr_confidences=[0.99, 0.01])
    assert sure["intent"] == "PlayMusic" and not sure["out_of_scope"]
    assert unsure["out_of_scope"] and unsure["reason"] == "asr_low_confidence" and unsure["slots"] == {}
    assert unsure["best_in_scope"] == "PlayMusic"  # the NLU's guess is kept for inspection, not acted on
    assert REPEAT_REPLY.endswith("?")


def test_intent_weighs_the_asr_hypotheses_by_their_posterior(tiny_model):
    """With the ASR's n best, the intent distribution is the posterior-weighted average of each hypothesis's; the
    slots stay those of the transcript; one hypothesis (or none) changes nothing."""
    import torch

    from assistant import Pipeline

    pipe = Pipeline.from_checkpoint(tiny_model)
    a, b = "play jazz by adele", "what is the weather in boston"
    mix = pipe._hypothesis_mixture([(a, 0.6), (b, 0.2), ("", 0.2)])  # the empty hypothesis is dropped
    single = [pipe._hypothesis_mixture([(t, 0.5), (t, 0.5)]) for t in (a, b)]
    torch.testing.assert_close(mix, 0.75 * single[0] + 0.25 * single[1])
    assert pipe._hypothesis_mixture([(a, 1.0)]) is None and pipe._hypothesis_mixture(None) is None
    alone, mixed, same = pipe.predict([a.split()] * 3, hypotheses=[None, [(a, 0.1), (b, 0.9)], [(a, 1.0)]])
    expected = 0.1 * single[0] + 0.9 * single[1]  # the tiny data has no oos class
    assert mixed["best_in_scope"] == pipe.intents[int(expected.argmax())] != alone["best_in_scope"]
    assert mixed["confidence"] == round(float(expected.max()), 4)
    assert mixed["tags"] == alone["tags"] and same == alone


def test_evaluate_audio_only_rows_are_scored_from_the_audio(tiny_model, shared_data, tmp_path):
    cards = shared_data / "assistant/speech_real/pocketsphinx/cards"
    m = tmp_path / "speech.jsonl"
    m.write_text(json.dumps({"audio": str(cards / "001.wav"), "intent": "PlayMusic", "voice": "reader+a"}) + "\n"
                 + json.dumps({"audio": str(cards / "003.wav"), "text": "seven of clubs", "intent": "PlayMusic",
                               "voice": "reader+b"}) + "\n")
    r = _run("assistant", "evaluate", m, "--model", tiny_model, "--json")
    assert r.exit_code == 0, _stderr(r)
    j = json.loads(r.stdout.strip().splitlines()[-1])
    assert j["mode"].startswith("speech") and j["n"] == 2 and j["wer_rows"] == 1 and 0.0 <= j["wer"] <= 1.0
    assert "slot-value" in j["slot_metric"]
    by_voice = j["intent_accuracy_by_voice"]  # "+variant" is the same voice
    assert list(by_voice) == ["reader"] and by_voice["reader"]["n"] == 2
    assert by_voice["reader"]["intent_accuracy"] == j["intent_accuracy"]


def test_transcribe_writes_asr_text_with_aligned_tags(tmp_path, monkeypatch):
    """`transcribe` turns a spoken manifest into NLU training rows: the recogniser's words, the reference's tags
    aligned onto them, no row for an utterance with nothing recognised; the file trains like any manifest."""
    from types import SimpleNamespace

    import assistant.cli as acli
    from assistant.io import read_manifest

    heard = {16000: "play some current by michael davis on spotify", 8000: ""}

    class ScriptedASR:  # stands in for Whisper: the test is about what happens to its words
        def transcribe(self, x):
            return heard[len(x)], []

    for name, n in (("a.wav", 16000), ("b.wav", 8000)):
        sf.write(tmp_path / name, 0.01 * np.random.default_rng(0).standard_normal(n), 16000)
    tags = ["O", "O", "B-genre", "O", "B-artist", "I-artist", "O", "B-service"]
    rows = [{"audio": "a.wav", "text": "play some jazz by miles davis on spotify", "intent": "PlayMusic", "tags": tags},
            {"audio": "b.wav", "text": "play jazz", "intent": "PlayMusic", "tags": ["O", "B-genre"]}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(acli, "_pipeline", lambda *a, **k: SimpleNamespace(asr=ScriptedASR()))
    out = tmp_path / "asr.jsonl"
    r = runner.invoke(app, ["assistant", "transcribe", str(tmp_path / "m.jsonl"), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["utterances"] == 1 and json.loads(r.stdout)["spoken"] == 2
    got = read_manifest(out)
    assert len(got) == 1 and got[0]["text"] == heard[16000] and got[0]["tags"] == tags
    assert got[0]["intent"] == "PlayMusic" and "audio" not in got[0]
    # text-only rows cannot be transcribed: one clear error, nothing written
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "play jazz", "intent": "PlayMusic"}) + "\n")
    r = runner.invoke(app, ["assistant", "transcribe", str(tmp_path / "t.jsonl"), "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "error:" in r.stderr and not (tmp_path / "x.jsonl").exists()


def test_asr_rows_train_the_nlu_but_not_the_prompt_or_the_threshold(tiny_manifest, tmp_path, monkeypatch):
    """Rows from `transcribe` (they carry "reference") are training data for the NLU; the Whisper prompt and the
    pocketsphinx LM are built from typed rows only, and the OOS threshold is tuned on typed validation rows."""
    import assistant.train as atrain
    from assistant.io import read_manifest
    from assistant.train import train

    asr = tmp_path / "asr.jsonl"
    rows = [{"text": f"play zzyzx {x} by adele", "intent": "PlayMusic", "tags": ["O", "O", "B-track", "O", "B-artist"],
             "reference": f"play {x} by adele"} for x in ("jazz", "blues", "rome", "oslo") for _ in range(3)]
    asr.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_manifest(asr)[0]["reference"] == "play jazz by adele"
    tuned_on = []
    real_tune = atrain._tune_on
    monkeypatch.setattr(atrain, "_tune_on", lambda model, val, oos_val, intents: tuned_on.append(val) or real_tune(
        model, val, oos_val, intents))
    out = tmp_path / "m.pt"
    train([tiny_manifest, asr], out, cfg_overrides=["epochs=2", "batch_size=16", "amp=false"], val_fraction=0.3,
          quiet=True)
    meta = torch.load(out, weights_only=True)["meta"]
    assert "zzyzx" in meta["vocab"]  # the NLU saw the ASR words
    assert "zzyzx" not in meta["asr_prompt"].lower() and "zzyzx" not in meta["lm_text"]
    assert meta["oos_tuned_on"].startswith("typed validation split")
    from assistant.io import load_dataset
    from mmapps.splits import validation_split

    examples = load_dataset(tiny_manifest)[0] + read_manifest(asr)
    _, val_idx = validation_split(len(examples), 0.3, seed=0, labels=[e["intent"] for e in examples])
    typed = [i for i in val_idx if "reference" not in examples[i]]
    assert len(typed) < len(val_idx)  # the split did hold ASR rows, and they were left out of the tuning
    assert len(tuned_on) == 1 and len(tuned_on[0]) == len(typed)


def test_asr_rows_can_train_the_intent_only(tiny_manifest, tmp_path, monkeypatch):
    """model.asr_slots=false: ASR rows (noisy aligned tags) reach the intent loss but not the slot loss, and the
    validation slot F1 skips them."""
    import assistant.train as atrain
    from assistant.train import train

    asr = tmp_path / "asr.jsonl"
    rows = [{"text": f"play zzyzx {x} by adele", "intent": "PlayMusic", "tags": ["O", "O", "B-track", "O", "B-artist"],
             "reference": f"play {x} by adele"} for x in ("jazz", "blues", "rome", "oslo") for _ in range(3)]
    asr.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []
    real_dataset = atrain.SLUDataset
    monkeypatch.setattr(atrain, "SLUDataset", lambda samples, **k: seen.append(samples) or real_dataset(samples, **k))
    out = tmp_path / "m.pt"
    train([tiny_manifest, asr], out, cfg_overrides=["epochs=1", "batch_size=16", "amp=false", "model.asr_slots=false"],
          val_fraction=0.3, quiet=True)
    meta = torch.load(out, weights_only=True)["meta"]
    zz = meta["vocab"].index("zzyzx")
    samples = [s for group in seen for s in group]
    from_asr = [s for s in samples if zz in s["ids"]]
    typed = [s for s in samples if zz not in s["ids"]]
    assert from_asr and typed and len({s["intent"] for s in from_asr}) == 1
    assert all(s["tags"] is None for s in from_asr) and all(s["tags"] is not None for s in typed)
    assert len(seen) == 2 and any(zz in s["ids"] for s in seen[1])  # the validation slot F1 met tagless rows


def test_refine_slots_tunes_the_slot_path_and_keeps_the_intent_path_bit_for_bit(tiny_model, tiny_manifest, tmp_path):
    """--refine-slots: MiniLM's top layer, the slot BiGRU and the slot head train; every other weight, the OOS
    threshold and the intent answers stay exactly those of the checkpoint; the LM is stored compressed."""
    from assistant import Pipeline
    from assistant.train import SLOT_PATH, refine_slots
    from mmapps.checkpoint import load_checkpoint
    from mmapps.errors import UserError

    out = tmp_path / "refined.pt"
    refine_slots(tiny_model, [tiny_manifest], out, cfg_overrides=["epochs=2", "lr=0.005", "batch_size=16",
                                                                   "amp=false"], layers=1, quiet=True)
    base, new = load_checkpoint(tiny_model), load_checkpoint(out)
    assert new["config"]["model"]["finetune_layers"] == 1 and new["config"]["model"]["finetune_slots_only"]
    for k, v in base["state_dict"].items():
        assert k.startswith(SLOT_PATH) or torch.equal(new["state_dict"][k], v), k
    head = "heads.tags.0.weight"
    assert not torch.allclose(new["state_dict"][head].float(), base["state_dict"][head], atol=1e-4)
    assert "lm_text" not in new["meta"] and isinstance(new["meta"]["lm_text_gz"], bytes)
    assert new["meta"]["oos_threshold"] == base["meta"]["oos_threshold"]
    a, b = Pipeline.from_checkpoint(tiny_model), Pipeline.from_checkpoint(out)
    assert b.meta["lm_text"] == a.meta["lm_text"]
    texts = [t.split() for t in ("what is the weather in madrid", "play blues by adele", "book a table for two")]
    for x, y in zip(a.predict(texts), b.predict(texts)):
        assert (x["intent"], x["confidence"], x["modality_weights"]) == (y["intent"], y["confidence"],
                                                                         y["modality_weights"])
    with pytest.raises(UserError, match="already has fine-tuned"):
        refine_slots(out, [tiny_manifest], tmp_path / "again.pt", layers=1, quiet=True)
    with pytest.raises(UserError, match="only train"):
        refine_slots(tiny_model, [tiny_manifest], tmp_path / "again.pt", cfg_overrides=["model.dim=8"], quiet=True)


@pytest.mark.parametrize("case", ["missing", "resume"])
def test_refine_slots_bad_input_is_one_error_line(case, tiny_model, tiny_manifest, tmp_path):
    out = tmp_path / "m.pt"
    src = tmp_path / "nope.pt" if case == "missing" else tiny_model
    extra = ["--resume"] if case == "resume" else []
    r = _run("assistant", "train", tiny_manifest, "--out", out, "--refine-slots", src, *extra)
    err = _stderr(r)
    assert r.exit_code == 2 and err.count("error:") == 1 and "Traceback" not in err
    assert ("nope.pt" in err) if case == "missing" else ("--resume" in err)
    assert not out.exists()


def test_a_corrupt_compressed_lm_is_a_checkpoint_error():
    import gzip

    from assistant.pipeline import expand_meta
    from mmapps.checkpoint import CheckpointError

    assert expand_meta({"lm_text_gz": gzip.compress(b"\\data\\\nngram 1=1\n")}, "m.pt")["lm_text"].startswith("\\data")
    with pytest.raises(CheckpointError, match="lm_text_gz"):
        expand_meta({"lm_text_gz": b"not gzip"}, "m.pt")
    with pytest.raises(CheckpointError, match="both"):
        expand_meta({"lm_text_gz": gzip.compress(b"x"), "lm_text": "\\data\\"}, "m.pt")


def _spoken_rows(tmp_path, n_per_intent=12):
    """Transcribed rows (as `transcribe` writes them) whose transcript says nothing about the intent but whose
    Whisper states (cached, as `transcribe` leaves them) do: what the audio branch is there to learn."""
    from assistant.train import save_cached_states

    rng = np.random.default_rng(0)
    pattern = rng.choice([-1.0, 1.0], 512)  # a direction, not an offset (the encoder's LayerNorm removes offsets)
    rows = []
    for k, (intent, sign) in enumerate((("PlayMusic", 1.0), ("GetWeather", -1.0))):
        for i in range(n_per_intent):
            wav = tmp_path / f"{intent}{i}.wav"
            sf.write(wav, 0.01 * rng.standard_normal(1600 + i + 100 * k), 16000)  # distinct file content
            states = (sign * pattern + rng.standard_normal((20, 512))).astype(np.float16)
            save_cached_states(wav, states)
            rows.append({"text": "zzyzx qqq", "intent": intent, "tags": ["O", "O"], "reference": "-",
                         "source_audio": str(wav)})
    (tmp_path / "asr.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "asr.jsonl", rows


def test_refine_audio_learns_from_whisper_states_and_keeps_the_text_path(tiny_model, tmp_path, monkeypatch):
    """--refine-audio: the Whisper-state encoder and its fusion projection train on transcribed speech; every other
    weight, the OOS threshold and the answers to text-only input stay exactly the checkpoint's; where the
    transcript is useless, the audio now decides the intent."""
    from assistant import Pipeline
    from assistant.train import AUDIO_PATH, cached_states, refine_audio
    from mmapps.checkpoint import load_checkpoint
    from mmapps.errors import UserError

    monkeypatch.setenv("MMAPPS_CACHE", str(tmp_path / "cache"))
    manifest, rows = _spoken_rows(tmp_path)
    out = tmp_path / "audio.pt"
    refine_audio(tiny_model, [manifest], out, cfg_overrides=["epochs=10", "lr=0.01", "batch_size=8", "amp=false"],
                 val_fraction=0.25, quiet=True)
    base, new = load_checkpoint(tiny_model), load_checkpoint(out)
    assert new["config"]["model"]["audio"] == "whisper" and new["meta"]["audio_trained"]
    assert new["meta"]["oos_threshold"] == base["meta"]["oos_threshold"]
    for k, v in new["state_dict"].items():
        assert k.startswith(AUDIO_PATH) or torch.equal(base["state_dict"][k], v), k
    a, b = Pipeline.from_checkpoint(tiny_model), Pipeline.from_checkpoint(out)
    texts = [t.split() for t in ("what is the weather in madrid", "play blues by adele", "zzyzx qqq")]
    for x, y in zip(a.predict(texts), b.predict(texts)):
        assert (x["intent"], x["confidence"]) == (y["intent"], y["confidence"])
    audio = [{"wstates": cached_states(r["source_audio"])} for r in rows]
    heard = b.predict([r["text"].split() for r in rows], audio)
    assert np.mean([p["best_in_scope"] == r["intent"] for p, r in zip(heard, rows)]) >= 0.9
    assert all(p["modality_weights"]["audio"] > 0 for p in heard)
    # the pipeline feeds the branch the states its Whisper kept from the transcription; pocketsphinx has none
    from types import SimpleNamespace

    b._asr = SimpleNamespace(encoder_states=lambda: audio[0]["wstates"])
    assert b.speech_features(np.zeros(16000, np.float32))["wstates"] is audio[0]["wstates"]
    b._asr = SimpleNamespace(transcribe=lambda x: ("", []))
    assert b.speech_features(np.zeros(16000, np.float32)) == {}
    typed = tmp_path / "typed.jsonl"  # typed rows have no recording to learn from
    typed.write_text("".join(json.dumps({"text": "play jazz", "intent": "PlayMusic"}) + "\n" for _ in range(6)))
    with pytest.raises(UserError, match="transcribe"):
        refine_audio(tiny_model, [typed], tmp_path / "x.pt", quiet=True)
    with pytest.raises(UserError, match="only train"):
        refine_audio(tiny_model, [manifest], tmp_path / "x.pt", cfg_overrides=["model.dim=8"], quiet=True)
    assert not (tmp_path / "x.pt").exists()
