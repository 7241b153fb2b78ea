"""The field's metrics: intent accuracy, CoNLL span-level slot F1, sentence accuracy, OOS recall /
in-scope accuracy (CLINC150), word error rate."""
from __future__ import annotations

from difflib import SequenceMatcher

import numpy as np

from .io import OOS, repair_bio


def conll_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """(type, start, end) spans as conlleval reads BIO: an I- after O or another type starts a span."""
    out, cur, start = set(), None, 0
    for i, t in enumerate(list(tags) + ["O"]):
        typ = t[2:] if t[:2] in ("B-", "I-") else None
        if cur is not None and (t.startswith("B-") or typ != cur):
            out.add((cur, start, i))
            cur = None
        if typ is not None and cur is None:
            cur, start = typ, i
    return out


def slot_f1(true_tags: list[list[str]], pred_tags: list[list[str]]) -> dict:
    tp = fp = fn = 0
    for t, p in zip(true_tags, pred_tags):
        ts, ps = conll_spans(t), conll_spans(p)
        tp, fp, fn = tp + len(ts & ps), fp + len(ps - ts), fn + len(ts - ps)
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0}


def align_words(ref: list[str], hyp: list[str], sub=None, indel: float = 1) -> list[tuple[int | None, int | None]]:
    """A minimum-cost alignment of two word lists: (ref index, hyp index) pairs in order, None on the side of an
    insertion or a deletion. ``sub(r, h)``: the cost of hearing h for r (default 0 if equal, else 1, with indel 1:
    the Levenshtein alignment behind WER)."""
    sub = sub or (lambda r, h: float(r != h))
    n, m = len(ref), len(hyp)
    d = np.zeros((n + 1, m + 1))
    d[:, 0], d[0, :] = np.arange(n + 1) * indel, np.arange(m + 1) * indel
    cost = [[sub(r, h) for h in hyp] for r in ref]
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            d[i, j] = min(d[i - 1, j - 1] + cost[i - 1][j - 1], d[i - 1, j] + indel, d[i, j - 1] + indel)
    pairs, i, j = [], n, m
    while i or j:  # ties prefer the diagonal: a misheard word keeps its reference word's place
        if i and j and np.isclose(d[i, j], d[i - 1, j - 1] + cost[i - 1][j - 1]):
            i, j = i - 1, j - 1
            pairs.append((i, j))
        elif i and np.isclose(d[i, j], d[i - 1, j] + indel):
            i -= 1
            pairs.append((i, None))
        else:
            j -= 1
            pairs.append((None, j))
    return pairs[::-1]


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words."""
    return sum(1 for i, j in align_words(ref, hyp) if i is None or j is None or ref[i] != hyp[j])


def _heard_as(ref_word: str, hyp_word: str) -> float:
    """Substitution cost for tag alignment: 0 for the same word, near 0 for a similar spelling ("theatres" /
    "theaters"), up to 1 for unrelated words; with insertions and deletions at 0.75, a misheard word pairs with the
    reference word it sounds like rather than with a neighbour."""
    return 1.0 - SequenceMatcher(None, ref_word, hyp_word).ratio()


def align_tags(ref_tokens: list[str], ref_tags: list[str], hyp_tokens: list[str]) -> list[str]:
    """BIO tags of a reference utterance carried onto its ASR hypothesis through the word alignment: a matched or
    substituted word takes its reference word's tag, an inserted word continues the slot it falls inside (else O),
    deleted words drop out; the result is repaired to valid BIO."""
    tags: list[str | None] = [None] * len(hyp_tokens)
    pairs = align_words(ref_tokens, hyp_tokens, sub=_heard_as, indel=0.75)
    for k, (i, j) in enumerate(pairs):
        if j is None:
            continue
        if i is not None:
            tags[j] = ref_tags[i]
            continue
        before = next((ref_tags[a] for a, _ in reversed(pairs[:k]) if a is not None), "O")
        after = next((ref_tags[a] for a, _ in pairs[k + 1:] if a is not None), "O")
        inside = before != "O" and after.startswith("I-") and after[2:] == before[2:]
        tags[j] = "I-" + before[2:] if inside else "O"
    return repair_bio(tags)


def wer(refs: list[str], hyps: list[str]) -> float:
    errors = sum(word_errors(r.split(), h.split()) for r, h in zip(refs, hyps))
    return errors / max(1, sum(len(r.split()) for r in refs))


def intent_metrics(true: list[str], pred: list[str]) -> dict:
    """intent_accuracy over all; with OOS examples also CLINC150's in_scope_accuracy and oos_recall."""
    true, pred = np.array(true), np.array(pred)
    out = {"intent_accuracy": float(np.mean(true == pred)) if len(true) else 0.0}
    oos = true == OOS
    if oos.any():
        out["oos_recall"] = float(np.mean(pred[oos] == OOS))
        out["in_scope_accuracy"] = float(np.mean(pred[~oos] == true[~oos])) if (~oos).any() else None
    return out


def slot_value_f1(true: list[dict], pred: list[dict]) -> dict:
    """F1 over (slot, value) pairs, values compared in the WER form (case, punctuation, "10" == "ten"): the slot
    metric that works when the words come from ASR and no longer align with the reference tags."""
    from collections import Counter

    from .asr import wer_form

    tp = fp = fn = 0
    for t, p in zip(true, pred):
        tc = Counter((k, " ".join(wer_form(v))) for k, vs in t.items() for v in str(vs).split(" ; "))
        pc = Counter((k, " ".join(wer_form(v))) for k, vs in p.items() for v in str(vs).split(" ; "))
        hit = sum((tc & pc).values())
        tp, fp, fn = tp + hit, fp + sum(pc.values()) - hit, fn + sum(tc.values()) - hit
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / (prec + rec) if prec + rec else 0.0}


def _slot_form(slots: dict) -> dict:
    from .asr import wer_form

    return {k: " ".join(wer_form(v)) for k, v in slots.items()}


def reference_slots(e: dict) -> dict:
    """The reference {slot: value} of an example: given in the manifest, or read from its text and BIO tags."""
    from .io import spans

    return e["slots"] if isinstance(e.get("slots"), dict) else spans(e["tokens"], e["tags"])


def evaluate_text(pipe, examples: list[dict]) -> dict:
    """Typed-text metrics: intent accuracy (+ OOS recall / in-scope accuracy), CoNLL span slot F1, sentence
    accuracy (intent and every tag right)."""
    preds = pipe.predict([e["tokens"] for e in examples])
    slots = slot_f1([e["tags"] for e in examples], [p["tags"] for p in preds])
    out = {"n": len(examples), "mode": "text"}
    out.update(intent_metrics([e["intent"] for e in examples], [p["intent"] for p in preds]))
    out.update({"slot_f1": slots["f1"], "slot_precision": slots["precision"], "slot_recall": slots["recall"],
                "sentence_accuracy": float(np.mean([p["intent"] == e["intent"] and p["tags"] == e["tags"]
                                                    for p, e in zip(preds, examples)]))})
    return out


def evaluate_speech(pipe, examples: list[dict]) -> dict:
    """Every metric from the audio (ASR -> NLU): intent accuracy, OOS recall, slot-value F1, sentence accuracy
    (intent and all slot values right); WER over the rows that carry a reference text."""
    from mmapps.progress import track

    from .asr import transcript_confidence, wer_form
    from .io import SAMPLE_RATE, load_audio

    hyps, feats, confs, nbest = [], [], [], []
    for e in track(examples, "recognising speech", total=len(examples)):
        x = load_audio(e["audio"])
        text, words = pipe.asr.transcribe(x)
        hyps.append(text)
        confs.append(transcript_confidence(text, words, len(x) / SAMPLE_RATE))
        feats.append(pipe.speech_features(x))
        nbest.append(pipe.asr.nbest())
    preds = pipe.predict([h.split() or None for h in hyps], feats, asr_confidences=confs, hypotheses=nbest)
    out = {"n": len(examples), "mode": f"speech ({pipe.asr_name} ASR -> NLU)"}
    out.update(intent_metrics([e["intent"] for e in examples], [p["intent"] for p in preds]))
    if any(e.get("voice") for e in examples):  # speakers differ far more than utterances: accuracy per voice
        by_voice: dict[str, list[bool]] = {}
        for e, p in zip(examples, preds):
            voice = (e.get("voice") or "unknown").split("+")[0]  # espeak's "+m3" variants are one voice
            by_voice.setdefault(voice, []).append(p["intent"] == e["intent"])
        out["intent_accuracy_by_voice"] = {v: {"n": len(r), "intent_accuracy": float(np.mean(r))}
                                           for v, r in sorted(by_voice.items())}
    if any(feats):  # the ablation: the same transcripts without the audio branch
        text_only = pipe.predict([h.split() or None for h in hyps], asr_confidences=confs, hypotheses=nbest)
        out["intent_accuracy_transcript_only"] = intent_metrics([e["intent"] for e in examples],
                                                                [p["intent"] for p in text_only])["intent_accuracy"]
    ref_slots = [reference_slots(e) for e in examples]
    sv = slot_value_f1(ref_slots, [p["slots"] for p in preds])
    out.update({"slot_f1": sv["f1"], "slot_precision": sv["precision"], "slot_recall": sv["recall"],
                "slot_metric": "slot-value F1 (ASR words do not align with the reference tags)",
                "sentence_accuracy": float(np.mean([
                    p["intent"] == e["intent"] and _slot_form(p["slots"]) == _slot_form(r)
                    for p, e, r in zip(preds, examples, ref_slots)]))})
    with_text = [(e, h) for e, h in zip(examples, hyps) if e.get("text")]
    if with_text:
        errors = sum(word_errors(wer_form(e["text"]), wer_form(h)) for e, h in with_text)
        out["wer"] = errors / max(1, sum(len(wer_form(e["text"])) for e, _ in with_text))
        out["wer_rows"] = len(with_text)
    return out


def evaluate_examples(pipe, examples: list[dict], use_audio: bool = True) -> dict:
    """Audio rows are evaluated from the audio alone (ASR -> NLU), text rows from their text; when a dataset has
    both, the text rows' metrics are reported under "text_rows"."""
    audio = [e for e in examples if use_audio and e.get("audio")]
    text = [e for e in examples if not (use_audio and e.get("audio"))]
    missing = [e for e in text if not e.get("tokens")]
    if missing:
        from mmapps.errors import UserError

        raise UserError(f"{len(missing)} rows have neither text nor audio to evaluate (--text-only drops audio)")
    if not audio:
        return evaluate_text(pipe, text)
    out = evaluate_speech(pipe, audio)
    if text:
        out["text_rows"] = evaluate_text(pipe, text)
    return out


# ----------------------------------------------------------------------------------------------- robustness
def recording_variants(seed: int = 0) -> dict:
    """How other microphones and lines would deliver the same 16 kHz utterance: {name: waveform -> waveform}. A
    telephone line (300-3400 Hz, 8 kHz), room noise at 15 dB SNR, a far, quiet speaker (-30 dB), an overdriven
    input (clipped at 8x gain), and 3 s of silence before and after. For measuring, never for choosing."""
    from scipy import signal

    def telephone(x):
        band = signal.butter(6, [300, 3400], "bandpass", fs=16000, output="sos")
        return signal.resample_poly(signal.resample_poly(signal.sosfilt(band, x), 1, 2), 2, 1).astype(np.float32)

    def noisy(x):
        rng = np.random.default_rng([seed, len(x)])
        power = float(np.mean(np.square(x))) or 1e-8
        return (x + rng.normal(0.0, np.sqrt(power / 10 ** 1.5), x.shape)).astype(np.float32)

    def quiet(x):
        return (x * 10 ** (-30 / 20)).astype(np.float32)

    def clipped(x):
        peak = float(np.abs(x).max()) or 1.0
        return np.clip(x * 8 / peak, -1.0, 1.0).astype(np.float32)

    def padded(x):
        pad = np.zeros(3 * 16000, dtype=np.float32)
        return np.concatenate([pad, np.asarray(x, np.float32), pad])

    return {"telephone 8 kHz": telephone, "noise 15 dB SNR": noisy, "quiet -30 dB": quiet, "clipped": clipped,
            "3 s silence around": padded}
