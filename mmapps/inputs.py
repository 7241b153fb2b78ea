"""The input budget every reader goes through: sizes are checked BEFORE anything is decoded.

- Only regular files are read (a symlink is followed only to a regular file; devices, FIFOs and sockets are
  refused), so /dev/zero or a FIFO in a data folder is a clear error, not an endless read or a hang.
- Declared sizes (image pixels, volume voxels, audio frames, file bytes) are checked against :data:`LIMITS`
  before decoding, so a 3 MB compressed bomb cannot reach gigabytes of memory.
- Text is read with a byte cap and decoded as UTF-8 with an error naming the file and the line.
Every failure is a :class:`~mmapps.errors.UserError` naming the file.
"""
from __future__ import annotations

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
    with open(path, "rb") as f:
        data = f.read(cap + 1)
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
    try:
        with Image.open(path) as im:  # reads the header only
            w, h = im.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: not a readable image ({' '.join(str(e).split())[:120]})") from None
    except Image.DecompressionBombError:  # older Pillow raises before we can check
        raise UserError(f"{path}: image is larger than the {cap:,}-pixel limit") from None
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
