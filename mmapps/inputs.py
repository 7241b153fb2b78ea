"""The input budget every reader goes through: sizes are checked BEFORE anything is decoded.

- Only regular files are read (a symlink is followed only to a regular file; devices, FIFOs and sockets are
  refused), so /dev/zero or a FIFO in a data folder is a clear error, not an endless read or a hang.
- Declared sizes (image pixels, volume voxels, audio frames, file bytes) are checked against :data:`LIMITS`
  before decoding, so a 3 MB compressed bomb cannot reach gigabytes of memory.
- Text is read with a byte cap and decoded as UTF-8 with an error naming the file and the line.
Every failure is a :class:`~mmapps.errors.UserError` naming the file.
"""
from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


@dataclass(frozen=True)
class Limits:
    file_bytes: int = 4 * 2**30          # any one input file
    text_bytes: int = 256 * 2**20        # a text/JSON/CSV/label file
    image_pixels: int = 64_000_000       # one 2D image (KITTI: 0.47 MP)
    volume_voxels: int = 2**28           # one CT/MR volume after decoding (512x512x1024)
    audio_seconds: float = 60.0          # one utterance
    points: int = 10_000_000             # one lidar sweep (HDL-64E: ~120k)


LIMITS = Limits()


def check_regular_file(path: str | os.PathLike, what: str = "file") -> Path:
    """The path, if it names a regular file (after following symlinks); else a UserError naming it."""
    path = Path(path)
    try:
        st = os.stat(path)  # follows symlinks
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read {what} ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise UserError(f"{path}: is a folder, expected a {what}")
    if not stat.S_ISREG(st.st_mode):
        kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                else "a device" if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode) else "not a regular file")
        raise UserError(f"{path}: is {kind}, not a regular {what}")
    if st.st_size > LIMITS.file_bytes:
        raise UserError(f"{path}: {st.st_size / 2**30:.1f} GiB is larger than the {LIMITS.file_bytes / 2**30:.0f} GiB "
                        f"limit for one {what}")
    return path


def read_bytes(path: str | os.PathLike, max_bytes: int | None = None, what: str = "file") -> bytes:
    """The file's bytes, refusing more than ``max_bytes`` (checked before and while reading)."""
    path = check_regular_file(path, what)
    cap = LIMITS.file_bytes if max_bytes is None else max_bytes
    if path.stat().st_size > cap:
        raise UserError(f"{path}: {path.stat().st_size:,} bytes is more than the {cap:,}-byte limit for a {what}")
    chunks, total = [], 0
    with open(path, "rb") as f:  # in chunks: f.read(n) would allocate n bytes up front
        while total <= cap:
            chunk = f.read(min(1 << 24, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    data = b"".join(chunks)
    if len(data) > cap:
        raise UserError(f"{path}: more than the {cap:,}-byte limit for a {what}")
    return data


def decode_text(data: bytes, path: str | os.PathLike, what: str = "text file") -> str:
    """UTF-8 (a BOM is dropped); an invalid byte is a UserError naming the file, line and byte."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(f"{path}: line {line}: {what} is not valid UTF-8 (byte 0x{data[e.start]:02x})") from None


def read_text(path: str | os.PathLike, max_bytes: int | None = None, what: str = "text file") -> str:
    """A capped, strictly decoded UTF-8 text file."""
    cap = LIMITS.text_bytes if max_bytes is None else max_bytes
    return decode_text(read_bytes(path, cap, what), path, what)


def check_image(path: str | os.PathLike, max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) from the image header, refusing images over the pixel budget before decoding."""
    path = check_regular_file(path, "image")
    from PIL import Image, UnidentifiedImageError

    cap = LIMITS.image_pixels if max_pixels is None else max_pixels
    import warnings

    try:
        with warnings.catch_warnings():  # PIL's DecompressionBombWarning: we judge the size ourselves, below
            warnings.simplefilter("ignore")
            with Image.open(path) as im:  # reads the header only
                w, h = im.size
    except Image.DecompressionBombError:  # Pillow refuses > 2x its own limit before we can check
        raise UserError(f"{path}: image is larger than the {cap:,}-pixel limit") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: not a readable image ({' '.join(str(e).split())[:120]})") from None
    if w * h > cap:
        raise UserError(f"{path}: {w}x{h} image is larger than the {cap:,}-pixel limit")
    return w, h


def check_voxels(shape, path: str | os.PathLike, what: str = "volume") -> None:
    """Refuse a declared volume size over the voxel budget (call with header values, before decoding)."""
    n = 1
    for s in shape:
        n *= max(int(s), 1)
    if n > LIMITS.volume_voxels:
        dims = "x".join(str(int(s)) for s in shape)
        raise UserError(f"{path}: {what} of {dims} voxels is larger than the {LIMITS.volume_voxels:,}-voxel limit")


# -- format-specific budgets: declared sizes from the header, checked before any decoding ----------------------
DEFLATED_TRANSFER_SYNTAX = "1.2.840.10008.1.2.1.99"
DICOM_INFLATED_BYTES = 2 * LIMITS.volume_voxels  # a deflated DICOM may inflate to at most one int16 volume budget


_QUIET_DEPTH = [0]


@contextlib.contextmanager
def quiet_pydicom():
    """pydicom warns (and logs) about every oddity of a damaged file; a clean error must stay one line.

    Re-entrant: nested uses (a series read inside one quiet block) cost nothing; only the outermost one touches
    the logger, whose ``setLevel`` clears every logger's cache (about 1 ms each time, per file of a series)."""
    import logging
    import warnings

    if _QUIET_DEPTH[0]:
        _QUIET_DEPTH[0] += 1
        try:
            yield
        finally:
            _QUIET_DEPTH[0] -= 1
        return
    log = logging.getLogger("pydicom")
    level = log.level
    log.setLevel(logging.CRITICAL)
    _QUIET_DEPTH[0] = 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _QUIET_DEPTH[0] = 0
        log.setLevel(level)


def _short(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return (text or type(e).__name__)[:160]


def _check_inflated_size(path: Path, offset: int, cap: int) -> None:
    """Inflate a deflated DICOM body in bounded chunks, discarding the output, to refuse a decompression bomb
    before pydicom inflates it whole in memory."""
    import zlib

    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    with open(path, "rb") as f:
        f.seek(offset)
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                break
            data = inflater.decompress(chunk, 1 << 24)
            while True:
                total += len(data)
                if total > cap:
                    raise UserError(f"{path}: deflated DICOM inflates to more than {cap:,} bytes (a decompression "
                                    f"bomb or an oversized file)")
                if not inflater.unconsumed_tail:
                    break
                data = inflater.decompress(inflater.unconsumed_tail, 1 << 24)
            if inflater.eof:
                break


def dicom_voxels(ds) -> int:
    """Rows x Columns x NumberOfFrames x SamplesPerPixel declared by a DICOM header (0 without an image)."""
    def num(tag, default):
        v = ds.get(tag, default)
        try:
            return max(int(v if v not in (None, "") else default), 0)
        except (TypeError, ValueError):
            raise UserError(f"{getattr(ds, 'filename', 'DICOM')}: DICOM tag {tag} is not a number ({v!r})") from None

    return num("Rows", 0) * num("Columns", 0) * max(num("NumberOfFrames", 1), 1) * max(num("SamplesPerPixel", 1), 1)


def read_dicom_header(path: str | os.PathLike, max_voxels: int | None = None):
    """The DICOM dataset WITHOUT its pixel data, after the budget checks (regular file, inflated size of a
    deflated file, Rows x Columns x NumberOfFrames x SamplesPerPixel and the bytes they need).

    Returns a pydicom Dataset read with ``stop_before_pixels=True``; read the pixels afterwards with
    :func:`read_dicom` (or ``pydicom.dcmread``) once the series as a whole fits the budget.
    """
    path = check_regular_file(path, "DICOM file")
    import pydicom
    from pydicom.filereader import read_preamble, _read_file_meta_info

    cap = LIMITS.volume_voxels if max_voxels is None else max_voxels
    with quiet_pydicom():
        try:
            with open(path, "rb") as f:
                read_preamble(f, False)
                meta = _read_file_meta_info(f)
                offset = f.tell()
            if str(meta.get("TransferSyntaxUID", "")) == DEFLATED_TRANSFER_SYNTAX:
                _check_inflated_size(path, offset, DICOM_INFLATED_BYTES)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except UserError:
            raise
        except Exception as e:  # InvalidDicomError, struct errors on mutated bytes, zlib errors, ...
            raise UserError(f"{path}: not a readable DICOM file ({_short(e)})") from None
        voxels = dicom_voxels(ds)
        bits = ds.get("BitsAllocated", 16)
        try:
            nbytes = voxels * max(int(bits or 16), 1) // 8
        except (TypeError, ValueError):
            raise UserError(f"{path}: DICOM tag BitsAllocated is not a number ({bits!r})") from None
    if voxels > cap or nbytes > 4 * cap:
        raise UserError(f"{path}: DICOM image of {ds.get('Rows')}x{ds.get('Columns')}x{ds.get('NumberOfFrames', 1)} "
                        f"({voxels:,} voxels) is larger than the {cap:,}-voxel limit")
    return ds


def read_dicom(path: str | os.PathLike, max_voxels: int | None = None, header_checked: bool = False):
    """The full DICOM dataset (pixel data included, not yet decoded) after :func:`read_dicom_header`'s checks
    (skipped with ``header_checked``: the caller has just read this file's header with them, e.g. a series)."""
    if not header_checked:
        read_dicom_header(path, max_voxels)
    import pydicom

    with quiet_pydicom():
        try:
            return pydicom.dcmread(Path(path))
        except Exception as e:
            raise UserError(f"{path}: not a readable DICOM file ({_short(e)})") from None


def check_nifti(path: str | os.PathLike, max_voxels: int | None = None):
    """The nibabel image (header read, data NOT loaded) if its declared dims fit the voxel budget."""
    path = check_regular_file(path, "NIfTI file")
    import nibabel as nib

    try:
        img = nib.load(str(path))  # reads the header only; the data stays on disk (lazy dataobj)
        shape = tuple(int(s) for s in img.shape)
    except Exception as e:
        raise UserError(f"{path}: not a readable NIfTI file ({_short(e)})") from None
    n = 1
    for s in shape:
        n *= max(s, 1)
    cap = LIMITS.volume_voxels if max_voxels is None else max_voxels
    if n > cap:
        raise UserError(f"{path}: NIfTI header declares {'x'.join(map(str, shape))} ({n:,} voxels), larger than "
                        f"the {cap:,}-voxel limit")
    return img


def check_audio_file(path: str | os.PathLike, max_seconds: float | None = None):
    """soundfile's header info (frames, samplerate, channels) if the declared duration fits the budget."""
    path = check_regular_file(path, "audio file")
    import soundfile as sf

    cap = LIMITS.audio_seconds if max_seconds is None else max_seconds
    try:
        info = sf.info(str(path))
    except Exception as e:
        raise UserError(f"{path}: not a readable audio file ({_short(e)})") from None
    if info.samplerate <= 0:
        raise UserError(f"{path}: audio header declares a sample rate of {info.samplerate} Hz")
    seconds = info.frames / info.samplerate
    if seconds > cap * 1.01:
        raise UserError(f"{path}: the audio is {seconds:.1f} s long; at most {cap:.0f} s is accepted")
    return info


def check_raw_audio(path: str | os.PathLike, sample_rate: int = 16_000, sample_bytes: int = 2,
                    max_seconds: float | None = None) -> Path:
    """Headerless audio: its duration follows from the file size, checked before reading a byte."""
    path = check_regular_file(path, "raw audio file")
    cap = LIMITS.audio_seconds if max_seconds is None else max_seconds
    seconds = path.stat().st_size / (sample_rate * sample_bytes)
    if seconds > cap * 1.01:
        raise UserError(f"{path}: raw audio of {seconds:.1f} s ({sample_rate} Hz, {8 * sample_bytes}-bit); at most "
                        f"{cap:.0f} s is accepted")
    return path


def check_points_file(path: str | os.PathLike, dims: int = 4, value_bytes: int = 4, max_points: int | None = None) -> int:
    """A binary point cloud (float32 x dims per point): the point count from the file size, within budget."""
    path = check_regular_file(path, "point cloud")
    cap = LIMITS.points if max_points is None else max_points
    size = path.stat().st_size
    n = size // (dims * value_bytes)
    if n > cap:
        raise UserError(f"{path}: {size:,} bytes hold {n:,} points; at most {cap:,} points are accepted")
    return n


def parse_json(text: str, path: str | os.PathLike, what: str = "JSON file", line: int | None = None):
    """json.loads with clean errors: a syntax error names the file (and line), absurd nesting is refused
    instead of a RecursionError."""
    import json

    where = f"{path}: line {line}" if line is not None else f"{path}"
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        at = f"line {e.lineno}" if line is None else "column"
        raise UserError(f"{where}: not valid JSON ({e.msg} at {at} {e.lineno if line is None else e.colno})") from None
    except RecursionError:
        raise UserError(f"{where}: {what} is nested too deeply to be read") from None


def read_json(path: str | os.PathLike, max_bytes: int | None = None, what: str = "JSON file"):
    """A capped, strictly UTF-8 JSON file, parsed with :func:`parse_json`."""
    return parse_json(read_text(path, max_bytes, what), path, what)
