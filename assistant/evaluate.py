"""The field's metrics: intent accuracy, CoNLL span-level slot F1, sentence accuracy, OOS recall /
in-scope accuracy (CLINC150), word error rate."""
from __future__ import annotations

import numpy as np

from .io import OOS


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


def word_errors(ref: list[str], hyp: list[str]) -> int:
    """Levenshtein distance over words."""
    d = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, 1):
        prev, d[0] = d.copy(), i
        for j, h in enumerate(hyp, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (r != h))
    return int(d[-1])


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
    from .models import log_mel

    hyps, mels, confs = [], [], []
    for e in track(examples, "recognising speech", total=len(examples)):
        x = load_audio(e["audio"])
        text, words = pipe.asr.transcribe(x)
        hyps.append(text)
        confs.append(transcript_confidence(text, words, len(x) / SAMPLE_RATE))
        mels.append(log_mel(x) if pipe.meta.get("audio_trained", True) else None)
    preds = pipe.predict([h.split() or None for h in hyps], mels, asr_confidences=confs)
    out = {"n": len(examples), "mode": f"speech ({pipe.asr_name} ASR -> NLU)"}
    out.update(intent_metrics([e["intent"] for e in examples], [p["intent"] for p in preds]))
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
