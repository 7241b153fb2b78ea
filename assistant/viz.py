"""Pictures: the log-mel spectrogram with the recognised words, the decision and the modality weights."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_understanding(x: np.ndarray, result: dict, out, reference: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmapps.io import atomic_path

    from .models import log_mel

    mel = log_mel(x).float().numpy()
    dur = len(x) / 16000
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(10, 5.5), gridspec_kw={"height_ratios": [2.2, 1]})
    ax.imshow(mel, origin="lower", aspect="auto", extent=[0, mel.shape[1] / 100, 0, mel.shape[0]], cmap="magma")
    # a label that would overlap the one before it on its row goes one row down (short words such as "s")
    char_s = 7.0 / 800 * max(dur, 0.1)  # ~7 px per 9 pt character on the ~800 px wide axes, in seconds
    row_end: list[float] = []
    for w in result.get("words", []):
        ax.axvline(w["start"], color="w", lw=0.6, alpha=0.6)
        mid, half = (w["start"] + w["end"]) / 2, (len(w["word"]) + 1) * char_s / 2
        row = next((i for i, end in enumerate(row_end) if mid - half >= end), len(row_end))
        row_end[row:row + 1] = [mid + half]
        ax.text(mid, mel.shape[0] * (0.92 - 0.09 * row), w["word"], color="w", ha="center", fontsize=9,
                rotation=0, bbox={"facecolor": "black", "alpha": 0.4, "pad": 1, "lw": 0})
    ax.set_xlim(0, max(dur, 0.1))
    ax.set_xlabel("time (s)")
    ax.set_ylabel("mel bin")
    title = f"heard: \"{result.get('transcript') or ''}\""
    if reference:
        title = f"said: \"{reference}\"\n" + title
    ax.set_title(title, fontsize=10)
    slots = ", ".join(f"{k}={v}" for k, v in result.get("slots", {}).items()) or "none"
    weights = result.get("modality_weights") or {}
    bx.axis("off")
    lines = [f"intent: {result['intent']}  (confidence {result['confidence']:.2f}"
             f"{', OUT OF SCOPE' if result['out_of_scope'] else ''})", f"slots: {slots}",
             f"reply: {result['reply']}",
             f"latency: {result.get('latency_ms')} ms (real-time factor {result.get('rtf')}); "
             f"ASR confidence {result.get('asr_confidence')}"]
    alternatives = "; ".join(f"{h['transcript']} ({h['posterior']:.2f})"
                             for h in (result.get("hypotheses") or [])[1:3])
    if alternatives:  # the next readings the intent weighed
        line = "also heard: " + alternatives  # kept clear of the fusion-weight bars on the right
        lines.insert(3, line if len(line) <= 64 else line[:63] + "…")
    bx.text(0.0, 1.0, "\n".join(lines), va="top", fontsize=10, family="monospace", transform=bx.transAxes,
            wrap=True)
    if weights:
        ins = bx.inset_axes([0.72, 0.0, 0.27, 0.55])
        names = list(weights)
        ins.barh(np.arange(len(names)), [weights[n] for n in names],
                 color=["#4c72b0", "#55a868", "#c44e52"][:len(names)])
        ins.set_yticks(np.arange(len(names)), names)
        ins.set_xlim(0, 1)
        ins.set_title("fusion weights", fontsize=8)
        ins.tick_params(labelsize=8)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return out
