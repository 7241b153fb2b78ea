"""Builders of hostile input files: decompression bombs, special files, broken encodings, odd types.

Each builder writes into a folder it is given and returns the path; files are small on disk (bombs are
compressed or sparse) so the whole suite stays fast.
"""
from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np


# -- special files -------------------------------------------------------------------------------------------
def fifo(path: Path) -> Path:
    """A named pipe: opening it for reading blocks forever unless the reader refuses non-regular files."""
    os.mkfifo(path)
    return path


def dev_zero_link(path: Path) -> Path:
    """A symlink to /dev/zero: an endless stream of zero bytes."""
    os.symlink("/dev/zero", path)
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A file of ``size`` zero bytes that takes no disk space."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# -- images ----------------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(path: Path, width: int, height: int, full: bool = True) -> Path:
    """An RGB PNG of width x height black pixels: a few hundred KB on disk. ``full=False`` writes only a
    truncated IDAT (the header alone declares the size)."""
    row = b"\x00" + b"\x00" * (3 * width)
    comp = zlib.compressobj(9)
    parts = []
    for _ in range(height if full else 1):
        parts.append(comp.compress(row))
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
                     + _png_chunk(b"IEND", b""))
    return path


# -- DICOM -----------------------------------------------------------------------------------------------------
def _ct_dataset(rows: int, cols: int, frames: int | None = None):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = "1.2.3.4.5.6"
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.Modality = "CT"
    ds.PatientID = "BOMB"
    ds.Rows, ds.Columns = rows, cols
    if frames:
        ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.RescaleIntercept, ds.RescaleSlope = "-1024", "1"
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.SliceThickness = 1
    return ds


def _file_meta(transfer_syntax: str) -> bytes:
    from pydicom.dataset import FileMetaDataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6"
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = "1.2.3.4.99"
    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_file_meta_info(buf, meta, enforce_standard=True)
    return b"\x00" * 128 + b"DICM" + buf.getvalue()


def _body(ds) -> bytes:
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    buf = DicomBytesIO()
    buf.is_little_endian, buf.is_implicit_VR = True, False
    write_dataset(buf, ds)
    return buf.getvalue()


def dicom_deflate_bomb(path: Path, inflated_bytes: int = 5 * 2**29) -> Path:
    """A Deflated Explicit VR Little Endian CT file whose body inflates to ``inflated_bytes`` of pixel data
    (about 1/1000 of that on disk), declaring a matching multi-frame image."""
    frame = 4096 * 4096 * 2
    frames = max(inflated_bytes // frame, 1)
    header = _body(_ct_dataset(4096, 4096, frames))
    pixel_len = frames * frame
    pixel_header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_len)
    comp = zlib.compressobj(1, zlib.DEFLATED, -zlib.MAX_WBITS)
    parts = [comp.compress(header + pixel_header)]
    zero = b"\x00" * (1 << 24)
    left = pixel_len
    while left > 0:
        parts.append(comp.compress(zero[: min(left, len(zero))]))
        left -= len(zero)
    parts.append(comp.flush())
    path.write_bytes(_file_meta("1.2.840.10008.1.2.1.99") + b"".join(parts))
    return path


def dicom_huge_header(path: Path, rows: int = 65535, cols: int = 65535, frames: int = 2000) -> Path:
    """An uncompressed CT file that declares a huge image but holds only a few bytes of pixel data."""
    ds = _ct_dataset(rows, cols, frames)
    ds.PixelData = b"\x00" * 64
    path.write_bytes(_file_meta("1.2.840.10008.1.2.1") + _body(ds))
    return path


def dicom_garbage_tags(path: Path) -> Path:
    """A CT file whose number tags (Slice Thickness, Rescale Slope: DS strings) hold letters."""
    ds = _ct_dataset(16, 16)
    ds.SliceThickness = "1234.5"
    ds.RescaleSlope = "6789.5"
    ds.PixelData = b"\x00" * (16 * 16 * 2)
    raw = _body(ds).replace(b"1234.5", b"abc!ef").replace(b"6789.5", b"x1 y z")
    path.write_bytes(_file_meta("1.2.840.10008.1.2.1") + raw)
    return path


# -- NIfTI -----------------------------------------------------------------------------------------------------
def nifti_gz_bomb(path: Path, shape=(2048, 2048, 1024), data_bytes: int = 64 * 2**20) -> Path:
    """A .nii.gz whose header declares ``shape`` int16 voxels; the gzip stream holds ``data_bytes`` zeros."""
    import gzip

    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.int16)
    hdr.set_zooms((1.0,) * len(shape))
    hdr["vox_offset"] = 352
    raw = hdr.binaryblock + b"\x00" * 4
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(raw)
        zero = b"\x00" * (1 << 24)
        for _ in range(max(data_bytes // len(zero), 1)):
            f.write(zero)
    return path


# -- audio -----------------------------------------------------------------------------------------------------
def wav(path: Path, seconds: float, rate: int = 16000, freq: float | None = 220.0, amplitude: float = 0.3) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    x = amplitude * np.sin(2 * np.pi * (freq or 0) * t) if freq else np.zeros_like(t)
    sf.write(str(path), x.astype(np.float32), rate, subtype="PCM_16")
    return path


def wav_lying_header(path: Path, declared_frames: int = 2**31 - 1) -> Path:
    """A WAV whose RIFF/data sizes declare hours of audio while the file holds a tenth of a second."""
    data = (np.random.default_rng(0).standard_normal(1600) * 3000).astype("<i2").tobytes()
    nbytes = min(declared_frames * 2, 2**32 - 64)
    fmt = struct.pack("<HHIIHH", 1, 1, 16000, 32000, 2, 16)
    path.write_bytes(b"RIFF" + struct.pack("<I", nbytes + 36) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
                     + b"data" + struct.pack("<I", nbytes) + data)
    return path


# -- text ------------------------------------------------------------------------------------------------------
def deep_json(depth: int = 100_000, key: str | None = None) -> str:
    """A JSON document nested ``depth`` levels deep (Python's json recurses: RecursionError)."""
    inner = "[" * depth + "]" * depth
    return json.dumps({key: "__X__"}).replace('"__X__"', inner) if key else inner


def bad_utf8(text: str, at: int = 0) -> bytes:
    """``text`` with a 0xff byte inserted at character ``at`` (0xff never occurs in UTF-8)."""
    b = text.encode()
    return b[:at] + b"\xff" + b[at:]


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def tampered_checkpoint(src: Path, dst: Path, edit) -> Path:
    """A copy of a checkpoint whose bundle was changed by ``edit(bundle)`` (weights_only loading still works)."""
    import torch

    bundle = torch.load(src, map_location="cpu", weights_only=True)
    edit(bundle)
    torch.save(bundle, dst)
    return dst


def foreign_resume_state(out: Path, scenario: str) -> Path:
    """``<out stem>.last.pt``: resumable trainer state saved by another architecture (a 2x2 linear model), as
    after training with other settings; ``train --out OUT --resume`` must name the mismatch."""
    import torch

    from mmapps.checkpoint import save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    last = out.with_name(out.stem + ".last.pt")
    save_checkpoint(last, model, {"scenario": scenario, "model": {}}, {}, extra={
        "optimizer": opt.state_dict(), "scheduler": None, "epoch": 0, "best": 1.0, "bad_epochs": 0, "history": [],
        "rng": torch.get_rng_state()})
    return last
