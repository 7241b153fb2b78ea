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


def evaluate_examples(pipe, examples: list[dict], use_audio: bool = True, workers: int = 1) -> dict:
    """Run the pipeline over a dataset; audio examples go through ASR + fusion, others through text."""
    from .io import load_audio
    from .models import log_mel

    audio_items = [e for e in examples if use_audio and e.get("audio")]
    result = {"n": len(examples)}
    if audio_items and len(audio_items) == len(examples):
        hyps, mels = [], []
        from mmapps.progress import track

        for e in track(audio_items, "recognising speech", total=len(audio_items)):
            x = load_audio(e["audio"])
            hyps.append(pipe.asr.transcribe(x)[0])
            mels.append(log_mel(x))
        result["wer"] = wer([e["text"] for e in audio_items], hyps)
        token_lists = [h.split() or None for h in hyps]
        preds = pipe.predict(token_lists, mels)
        result["mode"] = "speech (ASR transcript + audio)"
        # slots are scored on the typed text: ASR words do not align with the reference tags
        text_preds = pipe.predict([e["tokens"] for e in examples])
        slots = slot_f1([e["tags"] for e in examples], [p["tags"] for p in text_preds])
    else:
        preds = pipe.predict([e["tokens"] for e in examples])
        result["mode"] = "text"
        slots = slot_f1([e["tags"] for e in examples], [p["tags"] for p in preds])
        text_preds = preds
    result.update(intent_metrics([e["intent"] for e in examples], [p["intent"] for p in preds]))
    result["slot_f1"] = slots["f1"]
    result["slot_precision"], result["slot_recall"] = slots["precision"], slots["recall"]
    result["sentence_accuracy"] = float(np.mean([
        p["intent"] == e["intent"] and tp["tags"] == e["tags"] for p, tp, e in zip(preds, text_preds, examples)]))
    return result
