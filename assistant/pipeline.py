"""Load checkpoint -> ASR (Whisper by default, pocketsphinx as the light option) -> text normalisation ->
MiniLM features -> the fused SLU model (core FusionModel) -> intent, slots, out-of-scope, reply.
The Python API: ``Pipeline.from_checkpoint(path).understand(audio=..., text=...)``."""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch

from mmapps.checkpoint import CheckpointError
from mmapps.errors import UserError
from mmapps.pipeline import Pipeline as BasePipeline, check_finite_output

from .asr import ASR_CHOICES, get_recognizer, transcript_confidence
from .io import OOS, SAMPLE_RATE, check_text, decode_audio, load_audio, repair_bio, spans, tokenize
from .models import ModelConfig, TextEmbedder, build_model, char_codes, collate, decode_tags, log_mel

# "[...]" groups are dropped when a slot inside them is empty, so replies read well with partial slots
REPLIES = {
    "PlayMusic": "Playing[ {genre}][ {music_item}][ {track}][ {album}][ {playlist}][ by {artist}][ from {year}]"
                 "[ on {service}]",
    "AddToPlaylist": "Adding[ {entity_name}][ {music_item}][ {artist}] to[ {playlist_owner}][ {playlist}] playlist",
    "BookRestaurant": "Booking a table[ for {party_size_number}][ for {party_size_description}][ at {restaurant_name}]"
                      "[ at a {restaurant_type}][ serving {served_dish}][ with {cuisine}][ in {city}][ in {state}]"
                      "[ {timeRange}]",
    "GetWeather": "Here is the weather[ for {city}][ in {state}][ in {country}][ near {geographic_poi}][ {timeRange}]",
    "RateBook": "Rating[ {object_select}][ {object_name}][ {object_type}][ {rating_value}][ out of {best_rating}]",
    "SearchCreativeWork": "Searching for[ the {object_type}][ {object_name}]",
    "SearchScreeningEvent": "Looking up showtimes[ for {movie_name}][ of {object_type}][ at {location_name}]"
                            "[ {timeRange}]",
    "orderDrink": "One[ {size}][ {roast}][ {numberOfShots}][ {coffeeDrink}][ with {milkAmount}][ and {sugarAmount}]"
                  " coming up",
    OOS: "Sorry, I can't help with that.",
}


def make_reply(intent: str, slots: dict) -> str:
    """Fill the intent's template with the slots; optional groups whose slots are missing are dropped."""
    import re

    tpl = REPLIES.get(intent)
    if tpl is None:
        return f"OK: {intent}" + (" (" + ", ".join(f"{k}={v}" for k, v in slots.items()) + ")" if slots else "")

    def group(m):
        fields = re.findall(r"\{(\w+)\}", m.group(1))
        return m.group(1) if all(slots.get(f) for f in fields) else ""

    text = re.sub(r"\[([^\[\]]*)\]", group, tpl)
    text = re.sub(r"\{(\w+)\}", lambda m: slots.get(m.group(1), ""), text)
    return " ".join(text.split())


# ---- featurisation shared by training, evaluation and prediction --------------------------------------
def featurize(token_lists: list[list[str]], vocab: dict[str, int], embedder: TextEmbedder | None = None,
              cache_dir: Path | None = None, top_layers: int = 0) -> list[dict]:
    """Words -> {"ids", "wvec", "sent", "chars"} (with ``top_layers``, the model config's fine-tuned MiniLM
    layers: {"sub", "first"} too); MiniLM outputs cached on disk by content (re-runs are cheap)."""
    embedder = embedder or TextEmbedder()
    sent, words = None, None
    if cache_dir is not None:
        import hashlib

        key = hashlib.sha1("\n".join(" ".join(t) for t in token_lists).encode()).hexdigest()[:16]
        cfile = Path(cache_dir) / (f"minilm_{key}.pt" if not top_layers else f"minilm_{key}_top{top_layers}w.pt")
        if cfile.is_file():
            try:
                sent, words = torch.load(cfile, weights_only=True)
            except Exception:
                sent = None
    if sent is None:
        sent, words = embedder.embed(token_lists, top_layers=top_layers)
        if cache_dir is not None:
            from mmapps.io import atomic_path

            with atomic_path(cfile) as tmp:
                torch.save((sent, words), tmp)
    out = []
    for i, toks in enumerate(token_lists):
        toks = toks[:64]
        wf = words[i]  # word vectors, or subword states for the fine-tuned top layers
        vecs = ({"sub": wf["sub"], "first": wf["first"][:len(toks)], "wvec": wf["wvec"][:len(toks)]}
                if isinstance(wf, dict) else {"wvec": wf[:len(toks)]})
        out.append({"ids": [vocab.get(w, 1) for w in toks], **vecs, "sent": sent[i],
                    "chars": [char_codes(w) for w in toks]})
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("MMAPPS_CACHE", Path.home() / ".cache" / "mmapps")) / "assistant"


# ---- the pipeline -----------------------------------------------------------------------------------
# below this geometric-mean word probability the ASR is too unsure to act on: ask the user to repeat
# (a default from synthesized training-voice speech, where correct transcripts sit above 0.6; stored in meta)
ASR_MIN_CONFIDENCE = 0.45
REPEAT_REPLY = "Sorry, I didn't catch that. Could you say it again?"
META_KEYS = ("vocab", "intents", "tags")


class Pipeline(BasePipeline):
    """Spoken-language understanding: speech and/or text -> transcript, intent, slots, out-of-scope, reply."""

    scenario = "assistant"
    config_class = ModelConfig

    def __init__(self, model, config: ModelConfig, meta: dict | None = None, device: str = "auto",
                 path: str | None = None, asr: str = "whisper"):
        """Args: see :class:`mmapps.pipeline.Pipeline`; ``asr``: "whisper" (default) or "pocketsphinx"."""
        super().__init__(model, config, meta, device=device, path=path)
        from mmapps.errors import check_choice

        check_choice("--asr", asr, ASR_CHOICES)
        missing = [k for k in META_KEYS if not isinstance(self.meta.get(k), list) or not self.meta.get(k)]
        if missing:
            raise CheckpointError(f"{path}: checkpoint meta lacks the label maps {', '.join(missing)}")
        self.vocab = {w: i for i, w in enumerate(self.meta["vocab"])}
        self.intents = list(self.meta["intents"])
        self.tags = list(self.meta["tags"])
        if (len(self.vocab), len(self.intents), len(self.tags)) != (config.vocab_size, config.n_intents, config.n_tags):
            raise CheckpointError(f"{path}: label maps in meta do not match the model sizes in its config")
        self.threshold = _probability(self.meta.get("oos_threshold", 0.0), "oos_threshold", path)
        self.asr_min_confidence = _probability(self.meta.get("asr_min_confidence", ASR_MIN_CONFIDENCE),
                                               "asr_min_confidence", path)
        self.meta = expand_meta(self.meta, path)
        _check_asr_meta(self.meta, path)
        self.asr_name = asr
        self._embedder = None
        self._asr = None

    @classmethod
    def build_model(cls, config: ModelConfig):
        return build_model(config)

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = TextEmbedder(str(self.device) if self.device.type == "cuda" else "cpu")
        return self._embedder

    @property
    def asr(self):
        """The recognizer (loaded on first use): ``asr.transcribe(x [N] float32 16 kHz) -> (text, words)``."""
        if self._asr is None:
            self._asr = get_recognizer(self.asr_name, self.meta)
        return self._asr

    # -- batch prediction (evaluation, bench) ------------------------------------------------------------
    @torch.no_grad()
    def predict(self, token_lists: list[list[str] | None], audio: list | None = None, batch_size: int = 64,
                asr_confidences: list | None = None, hypotheses: list | None = None) -> list[dict]:
        """Batch prediction.

        Args:
            token_lists: per item its words (or None when there is no text).
            audio: per item its audio features as ``speech_features`` returns them (or None / {}).
            asr_confidences: per item the ASR's confidence (or None); below the checkpoint's minimum the item is
                rejected as not understood.
            hypotheses: per item the ASR's n best [(transcript, posterior)] (``asr.nbest()``) or None: the intent
                and out-of-scope decision then weighs every hypothesis (the slots stay those of ``token_lists``).
        Returns:
            per item {"intent", "best_in_scope", "confidence", "out_of_scope", "tags", "slots", "modality_weights"}.
        """
        audio = audio or [None] * len(token_lists)
        asr_confidences = asr_confidences or [None] * len(token_lists)
        hypotheses = hypotheses or [None] * len(token_lists)
        have = [i for i, t in enumerate(token_lists) if t]
        feats = [{"ids": [], "wvec": None, "sent": None} for _ in token_lists]
        if have:
            for i, f in zip(have, featurize([token_lists[i] for i in have], self.vocab, self.embedder,
                                           top_layers=self.config.finetune_layers)):
                feats[i] = f
        results = []
        for s in range(0, len(feats), batch_size):
            items = [{**feats[i], **(audio[i] or {})} for i in range(s, min(s + batch_size, len(feats)))]
            out = self._forward({"batch": collate(items)})
            toks = [(token_lists[i] or [])[:64] for i in range(s, s + len(items))]
            mixtures = [self._hypothesis_mixture(hypotheses[i], audio[i]) for i in range(s, s + len(items))]
            results += self._decode(out, toks, asr_confidences[s:s + len(items)], mixtures)
        return results

    @torch.no_grad()
    def _hypothesis_mixture(self, hypotheses: list | None, audio: dict | None = None) -> torch.Tensor | None:
        """P(intent) averaged over the ASR's n best transcripts, each weighted by its posterior within the beam
        (the n-best expected posterior): a word the best transcript misheard is often right in the next one, and
        an out-of-domain request stays out of scope when no reading of it is a SNIPS command. None for fewer than
        two hypotheses."""
        from mmapps.data import move_to

        hyps = [(tokenize(t)[:64], w) for t, w in hypotheses or [] if tokenize(t)]
        if len(hyps) < 2:
            return None
        feats = featurize([t for t, _ in hyps], self.vocab, self.embedder, top_layers=self.config.finetune_layers)
        out = self.model(move_to(collate([{**f, **(audio or {})} for f in feats]), self.device))
        check_finite_output(out["outputs"], "assistant model output")
        probs = torch.softmax(out["outputs"]["intent"].float(), -1).cpu()
        w = torch.tensor([w for _, w in hyps], dtype=torch.float32)
        return (w[:, None] * probs).sum(0) / w.sum()

    def speech_features(self, x: np.ndarray) -> dict:
        """The audio branch's input for a waveform just transcribed by ``self.asr``: {"wstates": Whisper encoder
        states} for a model trained on them (taken from the transcription, no second pass; none with
        pocketsphinx), {"mel": log-mel} for a log-mel model trained with audio, {} for a text-only model (its
        untrained audio branch would add noise)."""
        if self.config.audio == "whisper":
            states = self.asr.encoder_states() if hasattr(self.asr, "encoder_states") else None
            return {} if states is None else {"wstates": states}
        return {"mel": log_mel(x)} if self.meta.get("audio_trained", True) else {}

    # -- the three steps ----------------------------------------------------------------------------------
    def preprocess(self, audio=None, text: str | None = None, raw: bool = False) -> dict:
        """Read and recognise the inputs.

        Args:
            audio: a path, the bytes of an audio file, or a 16 kHz float waveform [N]; or None.
            text: typed text (used instead of the transcript when both are given), or None.
            raw: the audio is headerless 16 kHz int16.
        Returns:
            {"x" [N] or None, "transcript", "words", "tokens", "audio" (``speech_features``), "asr_confidence",
            "t0"}.
        """
        if audio is None and text is None:
            raise UserError("no input: give --audio WAV and/or --text TEXT")
        if text is not None:
            check_text(text)
        self.embedder  # models load first: latency and RTF measure processing, not start-up
        if audio is not None:
            self.asr
        t0 = time.perf_counter()
        x, words, transcript, feats, conf, name, hyps = None, [], None, {}, None, "<audio>", None
        if audio is not None:
            if isinstance(audio, (str, Path)):
                name, x = str(audio), load_audio(audio, raw=raw)
            elif isinstance(audio, (bytes, bytearray)):
                name, x = "<audio bytes>", decode_audio(bytes(audio), "<audio bytes>", raw=raw)
            else:
                x = np.asarray(audio, dtype=np.float32)
            transcript, words = self.asr.transcribe(x)
            if not transcript and text is None:
                raise UserError(f"{name}: no speech recognised in the audio ({len(x) / SAMPLE_RATE:.2f} s)")
            conf = transcript_confidence(transcript, words, len(x) / SAMPLE_RATE)
            feats = self.speech_features(x)
            hyps = self.asr.nbest()
        tokens = tokenize(text) if text is not None else tokenize(transcript or "")
        return {"x": x, "transcript": transcript, "words": words, "tokens": tokens, "audio": feats,
                "asr_confidence": conf if text is None else None, "hypotheses": hyps if text is None else None,
                "text": text, "t0": t0}

    def _forward(self, inputs: dict) -> dict:
        """{"batch": collate(...)} or preprocess() output -> the FusionModel outputs (logits [B, K], tags
        [B, T, n_tags], modality weights)."""
        batch = inputs.get("batch")
        if batch is None:
            toks = inputs["tokens"][:64]
            feat = (featurize([toks], self.vocab, self.embedder, top_layers=self.config.finetune_layers)[0] if toks
                    else {"ids": [], "wvec": None, "sent": None})
            batch = collate([{**feat, **inputs["audio"]}])
        from mmapps.data import move_to

        with torch.no_grad():
            out = self.model(move_to(batch, self.device))
        check_finite_output(out["outputs"], "assistant model output")
        return out

    def postprocess(self, outputs: dict, inputs: dict) -> dict:
        """-> {"transcript", "intent", "confidence", "slots", "out_of_scope", "reply", "rtf", "latency_ms",
        "words", "asr", "asr_confidence", "hypotheses" (the ASR's n best the intent weighed; [] for text),
        "modality_weights"}."""
        mixture = self._hypothesis_mixture(inputs.get("hypotheses"), inputs["audio"])
        r = self._decode(outputs, [inputs["tokens"][:64]], [inputs["asr_confidence"]], [mixture])[0]
        dt = time.perf_counter() - inputs["t0"]
        x = inputs["x"]
        not_heard = r.get("reason") == "asr_low_confidence"
        return {"transcript": inputs["transcript"] if x is not None else inputs["text"], "intent": r["intent"],
                "confidence": r["confidence"], "slots": r["slots"], "out_of_scope": r["out_of_scope"],
                "reply": REPEAT_REPLY if not_heard else make_reply(r["intent"], r["slots"]),
                "reason": r.get("reason"),
                "rtf": round(dt / (len(x) / SAMPLE_RATE), 4) if x is not None else None,
                "latency_ms": round(dt * 1000, 1),
                "asr": self.asr_name if x is not None else None,
                "asr_confidence": None if inputs["asr_confidence"] is None else round(inputs["asr_confidence"], 4),
                "words": inputs["words"],
                "hypotheses": [{"transcript": t, "posterior": round(w, 4)} for t, w in inputs.get("hypotheses") or []],
                "modality_weights": r["modality_weights"]}

    def understand(self, audio=None, text: str | None = None, raw: bool = False) -> dict:
        """Speech and/or typed text -> the JSON-ready result (see ``postprocess``).

        Args:
            audio: a path, audio-file bytes or a 16 kHz float waveform [N]; text: typed text; raw: headerless
                16 kHz int16 audio.
        """
        return self(audio=audio, text=text, raw=raw)

    def _decode(self, out: dict, token_lists: list[list[str]], asr_confidences: list,
                mixtures: list | None = None) -> list[dict]:
        probs = torch.softmax(out["outputs"]["intent"].float(), -1).cpu()
        mixtures = mixtures or [None] * len(token_lists)
        tag_ids = decode_tags(self.model, out["outputs"]["tags"], self.tags, [len(t) for t in token_lists])
        weights = {k: v.detach().cpu() for k, v in (out.get("weights") or {}).items()}
        oos_idx = self.intents.index(OOS) if OOS in self.intents else None
        results = []
        for b, toks in enumerate(token_lists):
            p = probs[b] if mixtures[b] is None else mixtures[b]
            scope = p.clone()
            if oos_idx is not None:
                scope[oos_idx] = -1
            best = int(scope.argmax())
            conf = float(p[best])
            reason = None
            if oos_idx is not None and int(p.argmax()) == oos_idx:
                reason = "oos_class"
            elif conf < self.threshold:
                reason = "low_intent_confidence"
            if asr_confidences[b] is not None and asr_confidences[b] < self.asr_min_confidence:
                reason = "asr_low_confidence"
            tag_seq = repair_bio([self.tags[t] for t in tag_ids[b]])
            oos = reason is not None
            results.append({"intent": OOS if oos else self.intents[best], "best_in_scope": self.intents[best],
                            "confidence": round(conf, 4), "out_of_scope": oos, "reason": reason, "tags": tag_seq,
                            "slots": {} if oos else spans(toks, tag_seq),
                            "modality_weights": {k: float(v[b]) for k, v in weights.items()}})
        return results


def _probability(value, name: str, path) -> float:
    """A threshold from the checkpoint meta: a finite number in [0, 1], or the checkpoint is refused."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise CheckpointError(f"{path}: meta {name} must be a number in [0, 1]; got {value!r}")
    return float(value)


def expand_meta(meta: dict, path) -> dict:
    """A checkpoint may store its ARPA LM gzip-compressed (``assistant.train.compact_meta``): expand it."""
    import gzip
    import zlib

    packed = meta.get("lm_text_gz")
    if packed is None:
        return meta
    if "lm_text" in meta:  # which of the two would pocketsphinx use? refuse rather than guess
        raise CheckpointError(f"{path}: meta holds both lm_text and lm_text_gz; a checkpoint stores one LM")
    try:
        lm = gzip.decompress(packed).decode("utf-8")
    except (TypeError, OSError, EOFError, zlib.error, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: meta lm_text_gz is not a gzip-compressed language model ({e})") from e
    return {**{k: v for k, v in meta.items() if k != "lm_text_gz"}, "lm_text": lm}


def _check_asr_meta(meta: dict, path) -> None:
    """The stored pocketsphinx LM must look like an ARPA file and the Whisper prompt must be short text."""
    import re

    lm = meta.get("lm_text")
    if lm is not None and (not isinstance(lm, str) or "\x00" in lm
                           or not re.search(r"\\data\\\s*\nngram 1=\d+", lm)):
        raise CheckpointError(f"{path}: meta lm_text is not an ARPA language model")
    prompt = meta.get("asr_prompt")
    if prompt is not None and (not isinstance(prompt, str) or len(prompt) > 1000 or "\x00" in prompt):
        raise CheckpointError(f"{path}: meta asr_prompt must be text of at most 1000 characters")
