"""Real formats in: audio files (soundfile), raw 16 kHz int16, SNIPS/JointBERT folders, CLINC150 json,
JSON-lines manifests. Every loader validates and raises UserError naming the file and the problem."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmapps.errors import UserError

SAMPLE_RATE = 16_000
MAX_SECONDS = 60.0
MIN_SECONDS = 0.2  # shorter than any word: Whisper would only hallucinate on it
MAX_TEXT = 1000
OOS = "oos"  # the out-of-scope intent label (CLINC150 convention)


# ---- audio ----------------------------------------------------------------------------------------
def _check_signal(x: np.ndarray, sr: int, path) -> np.ndarray:
    if x.size == 0:
        raise UserError(f"{path}: the audio is empty (no samples)")
    if not np.all(np.isfinite(x)):
        raise UserError(f"{path}: the audio holds NaN or infinite samples")
    seconds = x.shape[0] / sr
    if seconds > MAX_SECONDS:
        raise UserError(f"{path}: the audio is {seconds:.1f} s long; at most {MAX_SECONDS:.0f} s is accepted")
    if seconds < MIN_SECONDS:
        raise UserError(f"{path}: the audio is too short ({seconds * 1000:.0f} ms; a spoken command takes at "
                        f"least {MIN_SECONDS * 1000:.0f} ms)")
    peak = float(np.max(np.abs(x)))
    if peak < 1e-4:
        raise UserError(f"{path}: the audio is silent (peak level {peak:.1e})")
    # clipped-only: nearly every sample sits at full scale, so there is no speech waveform left
    if np.mean(np.abs(x) >= 0.999 * peak) > 0.5 and peak >= 0.99:
        raise UserError(f"{path}: the audio is clipped throughout (most samples at full scale)")
    return x


def resample(x: np.ndarray, sr: int, target: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling with torchaudio (espeak's 22,050 Hz and any other rate -> 16 kHz)."""
    if sr == target:
        return x.astype(np.float32)
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(x.astype(np.float32)), sr, target).numpy()


def decode_audio(data: bytes, name: str = "<bytes>", raw: bool = False) -> np.ndarray:
    """Bytes of a wav/flac/ogg file (or raw 16 kHz int16 with raw=True) -> mono float32 at 16 kHz."""
    if not data:
        raise UserError(f"{name}: the audio file is empty (0 bytes)")
    if raw:
        if len(data) % 2:
            raise UserError(f"{name}: raw audio must be 16-bit samples (odd byte count {len(data)})")
        x = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
        return _check_signal(x, SAMPLE_RATE, name)
    import io as _io

    import soundfile as sf

    try:
        with sf.SoundFile(_io.BytesIO(data)) as f:
            if f.subtype in ("PCM_S8", "PCM_U8", "ALAW", "ULAW") and False:
                pass
            sr = f.samplerate
            if f.frames > MAX_SECONDS * sr * 1.01 + 1:
                raise UserError(f"{name}: the audio is {f.frames / sr:.1f} s long; at most "
                                f"{MAX_SECONDS:.0f} s is accepted")
            x = f.read(dtype="float32", always_2d=True)
    except UserError:
        raise
    except Exception as e:  # soundfile/libsndfile: not audio, unsupported sample width, truncated header
        msg = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"{name}: not a readable audio file ({msg[:160]})") from e
    if sr < 4000 or sr > 192_000:
        raise UserError(f"{name}: unsupported sample rate {sr} Hz")
    x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]  # downmix stereo
    _check_signal(x, sr, name)
    return _check_signal(resample(x, sr), SAMPLE_RATE, name)


# the largest audio file worth reading: 60 s of 192 kHz stereo float32 is 92 MB; raw 16 kHz int16 is 1.9 MB
MAX_FILE_BYTES = 100 * 2**20
MAX_RAW_BYTES = int(MAX_SECONDS * SAMPLE_RATE * 2)


def load_audio(path, raw: bool = False) -> np.ndarray:
    """An audio file -> mono float32 at 16 kHz. Its size is checked before anything is read, so a 3-hour
    recording is refused at once instead of being read into memory."""
    from mmapps.inputs import check_regular_file, read_bytes

    path = check_regular_file(path, "audio file")
    raw = raw or path.suffix.lower() in (".raw", ".pcm")
    size = path.stat().st_size
    if raw and size > MAX_RAW_BYTES:
        raise UserError(f"{path}: raw 16 kHz audio of {size:,} bytes is {size / 2 / SAMPLE_RATE:.0f} s long; "
                        f"at most {MAX_SECONDS:.0f} s is accepted")
    if size > MAX_FILE_BYTES:
        raise UserError(f"{path}: the audio file is {size / 2**20:.0f} MB; more than {MAX_SECONDS:.0f} s of "
                        f"audio fits in {MAX_FILE_BYTES // 2**20} MB")
    return decode_audio(read_bytes(path, MAX_FILE_BYTES, "audio file"), str(path), raw=raw)


def write_wav(path, x: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """16-bit PCM wav, atomically."""
    import soundfile as sf

    from mmapps.io import atomic_path

    with atomic_path(path, suffix=".wav") as tmp:
        sf.write(str(tmp), np.clip(x, -1, 1), sr, subtype="PCM_16", format="WAV")
        tmp.chmod(0o644)  # mkstemp files are private; samples and datasets are meant to be shared


# ---- text -----------------------------------------------------------------------------------------
def check_text(text: str, where: str = "--text") -> str:
    if text is None or not str(text).strip():
        raise UserError(f"{where}: the text is empty")
    if len(text) > MAX_TEXT:
        raise UserError(f"{where}: the text has {len(text)} characters; at most {MAX_TEXT} are accepted")
    if "\x00" in text:
        raise UserError(f"{where}: the text contains NUL characters")
    try:
        text.encode("utf-8")  # an invalid byte in argv arrives as a lone surrogate (surrogateescape)
    except UnicodeEncodeError as e:
        raise UserError(f"{where}: the text is not valid UTF-8 (byte 0x{ord(text[e.start]) & 0xff:02x} at "
                        f"character {e.start + 1})") from None
    return text


def tokenize(text: str) -> list[str]:
    """Whitespace words, lower-cased: SNIPS tags are per whitespace word, so tags align 1:1."""
    return str(text).lower().split()


# ---- datasets: list of {"text", "tokens", "tags", "intent", "audio"?} ------------------------------
def _example(text, intent, tags=None, audio=None, **extra):
    tokens = tokenize(text)
    ex = {"text": " ".join(tokens), "tokens": tokens, "intent": intent,
          "tags": tags if tags is not None else ["O"] * len(tokens)}
    if audio:
        ex["audio"] = str(audio)
    ex.update(extra)
    return ex


def read_snips(folder) -> list[dict]:
    folder = Path(folder)
    files = {n: folder / n for n in ("seq.in", "seq.out", "label")}
    for n, p in files.items():
        if not p.is_file():
            raise UserError(f"{folder}: not a SNIPS/JointBERT folder ({n} missing)")
    from mmapps.inputs import read_text

    lines = {n: read_text(p, what="SNIPS file").splitlines() for n, p in files.items()}
    if not (len(lines["seq.in"]) == len(lines["seq.out"]) == len(lines["label"])):
        raise UserError(f"{folder}: seq.in, seq.out and label have different line counts "
                        f"({len(lines['seq.in'])}, {len(lines['seq.out'])}, {len(lines['label'])})")
    out = []
    for i, (s, t, l) in enumerate(zip(lines["seq.in"], lines["seq.out"], lines["label"]), 1):
        words, tags = s.split(), t.split()
        if not words:
            continue
        if len(words) != len(tags):
            raise UserError(f"{folder / 'seq.out'}: line {i} has {len(tags)} tags for {len(words)} words")
        out.append(_example(s, l.strip(), tags))
    if not out:
        raise UserError(f"{folder}: holds no utterances")
    return out


def read_clinc(path, splits=("train", "oos_train")) -> list[dict]:
    path = Path(path)
    from mmapps.inputs import read_json

    data = read_json(path, what="CLINC150 file")  # capped, strict UTF-8, no RecursionError on deep nesting
    if not isinstance(data, dict) or not any(k in data for k in splits):
        raise UserError(f"{path}: not a CLINC150 file (expected keys like {', '.join(splits)})")
    out = []
    for split in splits:
        items = data.get(split, [])
        if not isinstance(items, list):
            raise UserError(f"{path}: {split} must be a list of [text, intent] pairs; got {type(items).__name__}")
        for item in items:
            if not (isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) and item[0].strip()
                    and isinstance(item[1], str)):
                raise UserError(f"{path}: {split} items must be [text, intent]; got {str(item)[:60]}")
            intent = OOS if split.startswith("oos") or item[1] == "oos" else str(item[1])
            out.append(_example(item[0], intent, split=split))
    return out


def read_manifest(path) -> list[dict]:
    path = Path(path)
    out = []
    from mmapps.inputs import parse_json, read_text

    for i, line in enumerate(read_text(path, what="manifest").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = parse_json(line, path, "manifest line", line=i)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {i} is not JSON ({e.msg})") from e
        # a row is text and/or audio; audio without text is fine (the WER is then skipped for it)
        if not isinstance(rec, dict) or "intent" not in rec or not (str(rec.get("text") or "").strip()
                                                                    or rec.get("audio")):
            raise UserError(f"{path}: line {i} needs 'intent' and 'text' or 'audio'")
        text = str(rec.get("text") or "")
        tags = rec.get("tags")
        tokens = tokenize(text)
        for key, kinds in (("text", str), ("intent", (str, int)), ("audio", str), ("tags", list), ("voice", str)):
            if rec.get(key) is not None and (not isinstance(rec[key], kinds) or isinstance(rec[key], bool)):
                raise UserError(f"{path}: line {i}: '{key}' must be {'a list of tags' if key == 'tags' else 'text'}; "
                                f"got {type(rec[key]).__name__}")
        if tags is not None and not all(isinstance(t, str) for t in tags):
            raise UserError(f"{path}: line {i}: 'tags' must be a list of strings such as 'O' or 'B-artist'")
        if tags is not None and len(tags) != len(tokens):
            raise UserError(f"{path}: line {i} has {len(tags)} tags for {len(tokens)} words")
        slots = rec.get("slots")
        if slots is not None and not (isinstance(slots, dict) and all(isinstance(v, str) for v in slots.values())):
            raise UserError(f"{path}: line {i}: 'slots' must map slot names to text values")
        audio = rec.get("audio")
        if audio and not Path(audio).is_absolute():
            audio = path.parent / audio
        # "reference": the typed text an ASR-transcribed row came from (``transcribe``)
        # "source_audio": the recording it was transcribed from (its Whisper states train the audio branch)
        extra = {k: rec[k] for k in ("voice", "reference") if isinstance(rec.get(k), str)}
        if isinstance(rec.get("source_audio"), str):
            src = Path(rec["source_audio"])
            extra["source_audio"] = str(src if src.is_absolute() else path.parent / src)
        if slots is not None:
            extra["slots"] = slots
        out.append(_example(text, str(rec["intent"]), tags, audio, **extra))
    if not out:
        raise UserError(f"{path}: the manifest holds no utterances")
    return out


def load_dataset(path, clinc_splits=("train", "oos_train")) -> tuple[list[dict], str]:
    """A dataset root or split folder -> (examples, a description of what was used)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: dataset not found")
    if path.is_dir():
        if (path / "seq.in").is_file():
            return read_snips(path), f"SNIPS/JointBERT folder {path}"
        for sub in ("train", "dev", "test"):
            if (path / sub / "seq.in").is_file():
                return read_snips(path / sub), f"SNIPS/JointBERT folder {path / sub}"
        if (path / "manifest.jsonl").is_file():
            return read_manifest(path / "manifest.jsonl"), f"manifest {path / 'manifest.jsonl'}"
        raise UserError(f"{path}: no seq.in/seq.out/label, train/ split or manifest.jsonl found")
    if path.suffix == ".jsonl":
        return read_manifest(path), f"manifest {path}"
    if path.suffix == ".json":
        return read_clinc(path, clinc_splits), f"CLINC150 {path} ({', '.join(clinc_splits)})"
    raise UserError(f"{path}: unsupported dataset (expected a SNIPS folder, a CLINC150 .json or a .jsonl manifest)")


def spans(tokens: list[str], tags: list[str]) -> dict[str, str]:
    """BIO tags -> {slot: value} (later spans of the same slot are joined with ' ; ')."""
    out: dict[str, str] = {}
    cur, words = None, []

    def flush():
        if cur:
            v = " ".join(words)
            out[cur] = f"{out[cur]} ; {v}" if cur in out else v

    for w, t in zip(tokens, tags):
        if t.startswith("B-") or (t.startswith("I-") and t[2:] != cur):
            flush()
            cur, words = t[2:], [w]
        elif t.startswith("I-"):
            words.append(w)
        else:
            flush()
            cur, words = None, []
    flush()
    return out


def from_asr(example: dict) -> bool:
    """A row that ``transcribe`` made from speech (it keeps its typed ``reference``): training data for the NLU,
    never for what describes typed language (the Whisper prompt, the pocketsphinx LM) or for the OOS threshold."""
    return "reference" in example


def repair_bio(tags: list[str]) -> list[str]:
    """An I- tag that does not continue a span of the same slot starts one (CoNLL convention)."""
    out, prev = [], "O"
    for t in tags:
        if t.startswith("I-") and prev[2:] != t[2:]:
            t = "B-" + t[2:]
        out.append(t)
        prev = t
    return out
