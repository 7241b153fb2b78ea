"""Training: datasets -> vocab, label maps, domain LM, cached MiniLM features, log-mels -> the core Trainer.
The out-of-scope class is learned from real out-of-domain queries (CLINC150) and a confidence threshold
is tuned on the held-out validation split (never on dev/test)."""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from mmapps.errors import UserError

from .io import OOS, load_audio, load_dataset, read_clinc
from .models import ModelConfig, SLUModel, bio_viterbi, collate, log_mel

# CLINC150 intents that belong to the SNIPS domain: not out-of-scope for a SNIPS model, so left out
SNIPS_OVERLAP = {"weather", "play_music", "restaurant_reservation", "restaurant_suggestion", "restaurant_reviews",
                 "accept_reservations", "confirm_reservation", "cancel_reservation", "how_busy", "next_song",
                 "what_song", "change_speed", "calendar", "date", "time", "timezone", "book_hotel", "book_flight",
                 "travel_suggestion", "meal_suggestion", "recipe", "what_can_i_ask_you", "fun_fact", "smart_home"}


class SLUDataset(torch.utils.data.Dataset):
    """Precomputed samples; in training, words are replaced by <unk> with word_dropout (robust to new names)."""

    def __init__(self, samples: list[dict], word_dropout: float = 0.0):
        self.samples, self.word_dropout = samples, word_dropout

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        s = self.samples[i]
        if self.word_dropout and s["ids"]:
            keep = torch.rand(len(s["ids"])) >= self.word_dropout
            s = {**s, "ids": [w if k else 1 for w, k in zip(s["ids"], keep.tolist())]}  # chars are kept
        return s


def load_oos(path, exclude=SNIPS_OVERLAP, limit: int | None = 4000, seed: int = 0) -> list[dict]:
    """Every CLINC150 train utterance outside `exclude` (plus oos_train) relabelled as the oos class."""
    ex = [e for e in read_clinc(path, ("train", "oos_train")) if e["intent"] not in exclude]
    rng = np.random.default_rng(seed)
    if limit and len(ex) > limit:
        ex = [ex[i] for i in sorted(rng.choice(len(ex), limit, replace=False))]
    return [{**e, "intent": OOS} for e in ex]


def _eval_fn(intents, tags):
    from .evaluate import slot_f1

    @torch.no_grad()
    def fn(model, loader, device):
        from mmapps.data import move_to

        yt, yp, tt, tp = [], [], [], []
        for batch in loader:
            out = model(move_to(batch, device))
            yp += out["outputs"]["intent"].argmax(-1).tolist()
            yt += batch["targets"]["intent"].tolist()
            lengths = [int((batch["ids"][b] != 0).sum()) for b in range(len(batch["ids"]))]
            pt = bio_viterbi(out["outputs"]["tags"].cpu(), tags, lengths)
            for b, n in enumerate(lengths):
                tt.append([tags[t] for t in batch["targets"]["tags"][b, :n].tolist()])
                tp.append([tags[t] for t in pt[b]])
        acc = float(np.mean(np.array(yt) == np.array(yp)))
        f1 = slot_f1(tt, tp)["f1"]
        return {"intent_accuracy": acc, "slot_f1": f1, "score": (acc + f1) / 2}

    return fn


def tune_threshold(probs: np.ndarray, y: np.ndarray, oos_idx: int | None, min_in_scope: float = 0.95,
                   max_drop: float = 0.005) -> float:
    """Largest OOS recall on validation whose in-scope accuracy stays >= min_in_scope and loses at most
    max_drop against no threshold (the oos class alone): rejection must not cost much in-scope accuracy."""
    if oos_idx is None or not (y == oos_idx).any():
        return 0.0
    scope = probs.copy()
    scope[:, oos_idx] = -1
    best, conf = scope.argmax(1), scope.max(1)
    is_oos = y == oos_idx
    if (~is_oos).any():
        base = float(np.mean((best == y)[~is_oos] & (probs.argmax(1) != oos_idx)[~is_oos]))
        min_in_scope = max(min_in_scope, base - max_drop)
    chosen, best_recall = 0.0, -1
    for t in np.linspace(0, 0.95, 96):
        pred_oos = (probs.argmax(1) == oos_idx) | (conf < t)
        ins = float(np.mean((best == y)[~is_oos] & ~pred_oos[~is_oos])) if (~is_oos).any() else 1.0
        rec = float(np.mean(pred_oos[is_oos]))
        if ins >= min_in_scope and rec > best_recall + 1e-9:
            chosen, best_recall = float(t), rec
    return chosen


@torch.no_grad()
def _tune_on(model, val: list[dict], intents: list[str]) -> float:
    """The OOS threshold from the model's intent probabilities on the validation samples."""
    model.eval()
    probs, ys = [], []
    for i in range(0, len(val), 256):
        b = collate(val[i:i + 256])
        probs.append(torch.softmax(model(b)["outputs"]["intent"], -1).numpy())
        ys += b["targets"]["intent"].tolist()
    return tune_threshold(np.concatenate(probs), np.array(ys), intents.index(OOS) if OOS in intents else None)


def train(data: list, out, oos_from=None, cfg_overrides: list[str] | None = None, config_file=None,
          fusion: str | None = None, epochs: int | None = None, val_fraction: float = 0.1, seed: int = 0,
          resume: bool = False, quiet: bool = False, oos_limit: int = 4000) -> dict:
    from mmapps.config import load_config
    from mmapps.trainer import TrainConfig, Trainer
    from mmapps.checkpoint import load_checkpoint, save_checkpoint

    from .pipeline import build_lm_text, cache_dir, featurize

    from mmapps.device import apply_thread_limit

    apply_thread_limit()

    overrides = list(cfg_overrides or [])
    mcfg_over = [o[len("model."):] for o in overrides if o.startswith("model.")]
    tcfg_over = [o[len("train."):] if o.startswith("train.") else o for o in overrides if not o.startswith("model.")]
    tcfg = load_config(TrainConfig, config_file, tcfg_over) if config_file or tcfg_over else TrainConfig()
    if not (config_file or any(o.startswith(("monitor", "mode")) for o in tcfg_over)):
        tcfg.monitor, tcfg.mode = "score", "max"
    if epochs is not None:
        tcfg.epochs = epochs
    mcfg = load_config(ModelConfig, None, mcfg_over) if mcfg_over else ModelConfig()
    if fusion:
        mcfg.fusion = fusion
    mcfg.validate()

    groups, used = [], []
    for d in data:
        ex, desc = load_dataset(d)
        groups.append(ex)
        used.append(desc)
    if oos_from:
        groups.append(load_oos(oos_from, limit=oos_limit, seed=seed))
        used.append(f"out-of-scope: CLINC150 {oos_from} (oos_train + domains outside SNIPS, {oos_limit} max)")
    examples = [e for g in groups for e in g]
    if len(examples) < 4:
        raise UserError(f"{data[0]}: too few utterances to train ({len(examples)})")

    # label maps, vocab, domain LM: everything the checkpoint needs to run without the training data
    intents = sorted({e["intent"] for e in examples})
    tags = ["O"] + sorted({t for e in examples for t in e["tags"]} - {"O"})
    counts = Counter(w for e in examples for w in e["tokens"])
    vocab = ["<pad>", "<unk>"] + sorted(w for w, c in counts.items() if c >= 2)
    in_domain = [e["text"] for e in examples if e["intent"] != OOS]
    config = {"task": "assistant-slu", "model": asdict(mcfg), "train": asdict(tcfg), "intents": intents,
              "tags": tags, "vocab": vocab, "lm_text": build_lm_text(in_domain), "oos_threshold": 0.0}
    vocab_idx = {w: i for i, w in enumerate(vocab)}
    tag_idx = {t: i for i, t in enumerate(tags)}

    # MiniLM once per dataset (cached on disk by content: the slow part on a CPU)
    feats = [f for g in groups for f in featurize([e["tokens"] for e in g], vocab_idx, cache_dir=cache_dir())]
    samples = []
    for e, f in zip(examples, feats):
        s = {**f, "intent": intents.index(e["intent"]), "tags": [tag_idx[t] for t in e["tags"][:64]]}
        if e.get("audio"):
            s["mel"] = log_mel(load_audio(e["audio"]))
        samples.append(s)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(samples))
    n_val = max(1, int(round(val_fraction * len(samples)))) if len(samples) >= 10 else 0
    val = [samples[i] for i in perm[:n_val]]
    tr = [samples[i] for i in perm[n_val:]]
    # audio examples also train the speech encoder alone: a copy without text
    tr += [{**s, "ids": [], "wvec": None, "sent": None} for s in tr if s.get("mel") is not None]

    torch.manual_seed(tcfg.seed)
    model = SLUModel(len(vocab), len(intents), len(tags), fusion=mcfg.fusion, dim=mcfg.dim, word_emb=mcfg.word_emb,
                     modality_dropout=mcfg.modality_dropout, slot_weight=mcfg.slot_weight, char_dim=mcfg.char_dim)
    meta = {"trained_on": used, "n_train": len(tr), "n_val": len(val)}
    trainer = Trainer(model, tcfg, out, meta=meta, model_config=config, collate_fn=collate,
                      eval_fn=_eval_fn(intents, tags) if val else None, quiet=quiet)
    history = trainer.fit(SLUDataset(tr, word_dropout=0.1), SLUDataset(val) if val else None, resume=resume)

    # tune the OOS threshold on the validation split, store it in the checkpoint
    bundle = load_checkpoint(out)
    if val and trainer.dist.is_main:
        model.load_state_dict(bundle["state_dict"])
        thr = _tune_on(model, val, intents)
        cfg = dict(bundle["config"]) if bundle["config"] else config
        cfg["oos_threshold"] = thr
        meta["history"] = history
        meta["val"] = history[-1] if history else {}
        save_checkpoint(out, bundle["state_dict"], cfg, meta)
    return {"model": str(out), "data": used, "epochs": len(history), "n_train": len(tr), "n_val": len(val),
            "intents": intents, "last": history[-1] if history else {}}


def retune_threshold(checkpoint, data: list, oos_from=None, oos_limit: int = 4000, seed: int = 0,
                     val_fraction: float = 0.1) -> float:
    """Re-derive the validation split of a finished training run (same data, seed) and re-tune the OOS
    threshold with tune_threshold; the checkpoint is rewritten atomically. Returns the threshold."""
    from mmapps.checkpoint import load_checkpoint, save_checkpoint

    from .models import build_model
    from .pipeline import cache_dir, featurize

    bundle = load_checkpoint(checkpoint)
    cfg = bundle["config"]
    groups = [load_dataset(d)[0] for d in data]
    if oos_from:
        groups.append(load_oos(oos_from, limit=oos_limit, seed=seed))
    examples = [e for g in groups for e in g]
    vocab_idx = {w: i for i, w in enumerate(cfg["vocab"])}
    intents, tag_idx = cfg["intents"], {t: i for i, t in enumerate(cfg["tags"])}
    feats = [f for g in groups for f in featurize([e["tokens"] for e in g], vocab_idx, cache_dir=cache_dir())]
    perm = np.random.default_rng(seed).permutation(len(examples))
    n_val = max(1, int(round(val_fraction * len(examples))))
    val = []
    for i in perm[:n_val]:
        e, f = examples[i], feats[i]
        s = {**f, "intent": intents.index(e["intent"]), "tags": [tag_idx.get(t, 0) for t in e["tags"][:64]]}
        if e.get("audio"):
            s["mel"] = log_mel(load_audio(e["audio"]))
        val.append(s)
    model = build_model(cfg)
    model.load_state_dict(bundle["state_dict"])
    thr = _tune_on(model, val, intents)
    cfg = {**cfg, "oos_threshold": thr}
    save_checkpoint(checkpoint, bundle["state_dict"], cfg, bundle.get("meta"))
    return thr
