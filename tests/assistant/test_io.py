import io

import numpy as np
import pytest
import soundfile as sf

from assistant.io import (MAX_SECONDS, check_text, decode_audio, load_audio, load_dataset, read_clinc, read_snips,
                          spans, tokenize)
from mmapps.errors import UserError


def _wav_bytes(x, sr, subtype="PCM_16"):
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def test_real_raw_and_wav(shared_data):
    ps = shared_data / "assistant/speech_real/pocketsphinx"
    x = load_audio(ps / "goforward.raw", raw=True)
    assert x.dtype == np.float32 and 2.0 < len(x) / 16000 < 4.0  # "go forward ten meters", 2.8 s
    for wav in sorted((ps / "cards").glob("*.wav")):
        y = load_audio(wav)
        assert y.ndim == 1 and 0.3 < len(y) / 16000 < 10 and np.abs(y).max() <= 1.0


def test_real_coffee_wav(shared_data):
    wav = sorted((shared_data / "assistant/speech_real/coffee/clean").glob("*.wav"))[0]
    assert load_audio(wav).ndim == 1


def test_stereo_44k_is_downmixed_and_resampled():
    sr = 44100
    t = np.arange(sr) / sr
    left = 0.5 * np.sin(2 * np.pi * 440 * t)
    x = decode_audio(_wav_bytes(np.stack([left, -left * 0 + left], 1), sr), "s.wav")
    assert abs(len(x) - 16000) <= 2
    # the 440 Hz tone survives resampling: its spectral peak stays at 440 Hz
    f = np.fft.rfftfreq(len(x), 1 / 16000)[np.argmax(np.abs(np.fft.rfft(x)))]
    assert abs(f - 440) < 3


def test_flac_and_ogg_read():
    x = 0.3 * np.sin(np.linspace(0, 400, 8000))
    for fmt in ("FLAC", "OGG"):
        buf = io.BytesIO()
        sf.write(buf, x, 8000, format=fmt)
        y = decode_audio(buf.getvalue(), f"a.{fmt.lower()}")
        assert abs(len(y) - 16000) < 50


@pytest.mark.parametrize("data,needle", [
    (b"", "empty"),
    (b"this is not audio at all, just text" * 10, "not a readable audio"),
    (_wav_bytes(np.zeros(16000), 16000), "silent"),
    (_wav_bytes(np.sign(np.sin(np.linspace(0, 300, 16000))) * 1.0, 16000), "clipped"),
    (_wav_bytes(np.full(int(16000 * (MAX_SECONDS + 1)), 0.1) * np.sin(np.arange(int(16000 * (MAX_SECONDS + 1)))), 16000),
     "at most"),
])
def test_bad_audio_is_a_clear_error(data, needle):
    with pytest.raises(UserError) as e:
        decode_audio(data, "bad.wav")
    assert "bad.wav" in str(e.value) and needle in str(e.value)


def test_raw_odd_byte_count_refused():
    with pytest.raises(UserError, match="16-bit"):
        decode_audio(b"\x01\x02\x03", "x.raw", raw=True)


def test_truncated_real_wav_refused_or_read(shared_data):
    data = (shared_data / "assistant/speech_real/pocketsphinx/cards/001.wav").read_bytes()
    with pytest.raises(UserError):
        decode_audio(data[:30], "trunc.wav")  # header cut in the middle


def test_text_checks():
    assert check_text("hello") == "hello"
    for bad in ["", "   ", "x" * 1001]:
        with pytest.raises(UserError):
            check_text(bad)
    assert tokenize("Play  Jazz ") == ["play", "jazz"]


def test_read_snips_real(shared_data):
    ex = read_snips(shared_data / "assistant/snips/dev")
    assert len(ex) == 700
    assert all(len(e["tokens"]) == len(e["tags"]) for e in ex)
    assert {e["intent"] for e in ex} == {"AddToPlaylist", "BookRestaurant", "GetWeather", "PlayMusic", "RateBook",
                                          "SearchCreativeWork", "SearchScreeningEvent"}
    # dataset root resolves to its train/ split
    ex2, used = load_dataset(shared_data / "assistant/snips")
    assert "train" in used and len(ex2) > 10000


def test_read_clinc_real(shared_data):
    ex = read_clinc(shared_data / "assistant/clinc150/data_train_val.json", ("val", "oos_val"))
    intents = [e["intent"] for e in ex]
    assert intents.count("oos") == 100 and len(set(intents)) == 151


def test_snips_mismatch_refused(tmp_path):
    (tmp_path / "seq.in").write_text("play jazz\n")
    (tmp_path / "seq.out").write_text("O\n")
    (tmp_path / "label").write_text("PlayMusic\n")
    with pytest.raises(UserError, match="line 1"):
        read_snips(tmp_path)


def test_spans():
    toks = "play jazz by miles davis".split()
    assert spans(toks, ["O", "B-genre", "O", "B-artist", "I-artist"]) == {"genre": "jazz", "artist": "miles davis"}


def test_long_raw_file_refused_from_its_size(tmp_path):
    import time

    big = tmp_path / "three_hours.raw"
    with open(big, "wb") as f:  # sparse: 3 h of 16 kHz int16 without writing 345 MB
        f.truncate(3 * 3600 * 16000 * 2)
    t = time.perf_counter()
    with pytest.raises(UserError, match="10800 s long"):
        load_audio(big, raw=True)
    assert time.perf_counter() - t < 1.0


def test_manifest_rows_may_hold_audio_without_text(tmp_path):
    import json

    from assistant.io import read_manifest

    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"audio": "a.wav", "intent": "orderDrink", "slots": {"size": "twelve ounce"}}) + "\n"
                 + json.dumps({"intent": "x"}) + "\n")
    with pytest.raises(UserError, match="line 2 needs 'intent' and 'text' or 'audio'"):
        read_manifest(m)
    m.write_text(json.dumps({"audio": "a.wav", "intent": "orderDrink", "slots": {"size": "twelve ounce"}}) + "\n")
    (row,) = read_manifest(m)
    assert row["tokens"] == [] and row["audio"] == str(tmp_path / "a.wav") and row["slots"] == {"size": "twelve ounce"}


def test_audio_shorter_than_a_word_is_refused():
    x = (0.3 * np.sin(np.arange(960) / 5)).astype(np.float32)  # 60 ms at 16 kHz
    buf = io.BytesIO()
    sf.write(buf, x, 16000, format="WAV")
    with pytest.raises(UserError, match="too short \\(60 ms"):
        decode_audio(buf.getvalue(), "short.wav")


def test_out_of_scope_training_set_leaves_out_exactly_the_snips_overlap(shared_data):
    """CLINC150 intents that a SNIPS intent serves are never trained as `oos` (update_playlist is AddToPlaylist);
    requests beside the domain that no SNIPS intent serves (meal suggestions, recipes, hotels, cancelling a
    reservation, the time, the next song) are."""
    from assistant.train import SNIPS_OVERLAP, load_oos

    path = shared_data / "assistant/clinc150/data_train_val.json"
    clinc = read_clinc(path, ("train", "oos_train"))
    assert SNIPS_OVERLAP <= {e["intent"] for e in clinc}  # no misspelt name silently excludes nothing
    texts = {e["intent"]: set() for e in clinc}
    for e in clinc:
        texts[e["intent"]].add(e["text"])
    trained = {e["text"] for e in load_oos(path, limit=None)}
    assert not trained & texts["update_playlist"] and not trained & texts["weather"]
    assert texts["meal_suggestion"] <= trained and texts["recipe"] <= trained and texts["oos"] <= trained
    for near in ("book_hotel", "cancel_reservation", "accept_reservations", "time", "next_song"):
        assert texts[near] <= trained, near
