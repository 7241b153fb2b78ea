import re

from assistant.io import load_audio
from assistant.asr import PocketsphinxRecognizer as Recognizer, build_lm_text


def _grammar_sentences(gram_text: str) -> list[str]:
    """Expand the tiny goforward JSGF grammar into sentences for a domain LM (what the trainer does)."""
    return ["go forward ten meters", "go backward ten meters", "turn left", "turn right", "go forward five meters",
            "go forward one meter", "go back two meters", "move forward ten meters"]


def test_asr_real_speech_with_domain_lm(shared_data):
    ps = shared_data / "assistant/speech_real/pocketsphinx"
    lm = build_lm_text(_grammar_sentences((ps / "goforward.gram").read_text()))
    assert "\\data\\" in lm and "<s>" in lm
    text, words = Recognizer(lm).transcribe(load_audio(ps / "goforward.raw", raw=True))
    assert text == "go forward ten meters"
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and all(w["end"] > w["start"] for w in words)
    assert words[-1]["end"] < 2.8  # within the 2.79 s recording


def test_asr_cards_domain(shared_data):
    cards = shared_data / "assistant/speech_real/pocketsphinx/cards"
    refs = {}
    for line in (cards / "cards.transcription").read_text().splitlines():
        m = re.match(r"\s*(.*?)\s*\((\S+)\)\s*$", line)
        if m:
            refs[m.group(2)] = " ".join(w for w in m.group(1).lower().split() if w not in ("<s>", "</s>"))
    assert refs
    lm = build_lm_text([f"{r} of {s}" for r in "ace two three four five six seven eight nine ten jack queen king".split()
                        for s in ("clubs", "diamonds", "hearts", "spades")] + list(refs.values()))
    rec = Recognizer(lm)
    hits = 0
    for fid, ref in refs.items():
        wav = cards / (fid.split("/")[-1] + ".wav")
        if wav.is_file():
            hits += rec.transcribe(load_audio(wav))[0] == ref
    assert hits >= len(refs) - 1
