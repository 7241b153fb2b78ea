"""Real formats in and out: DICOM series (pydicom), NIfTI (nibabel), patient records (FHIR R4 / JSON / CSV).

Every reader validates what it reads and raises ``UserError`` naming the file and the problem; anything
pydicom/nibabel throws on a broken file is re-raised as a UserError with the original as its cause.
Volumes are returned as float32 arrays [slices, rows, cols] with slices ordered inferior -> superior
(DICOM patient coordinates, LPS), plus the spacing (dz, dy, dx) in mm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmapps.errors import UserError

MAX_VOXELS = 2048 * 2048 * 2048  # refuse absurd header sizes before allocating (mutated files)


@dataclass
class Volume:
    array: np.ndarray  # float32 [D, H, W]; HU for CT
    spacing: tuple[float, float, float]  # (dz, dy, dx) mm
    modality: str  # "CT", "MR", or "unknown" (NIfTI)
    source: str
    warnings: list[str] = field(default_factory=list)
    # index (slice, row, col) -> DICOM patient coordinates (LPS, mm), 4x4; None when the file does not say.
    affine: np.ndarray | None = None
    tags: dict = field(default_factory=dict)  # hints from the header: BodyPartExamined, PatientID, StudyDate

    def index_to_lps(self, index) -> list[float]:
        """(slice, row, col) voxel index (may be fractional) -> [x, y, z] mm in DICOM patient coordinates."""
        aff = self.affine if self.affine is not None else default_affine(self.spacing)
        return [float(v) for v in (aff @ np.array([*[float(i) for i in index], 1.0]))[:3]]


def default_affine(spacing) -> np.ndarray:
    """Axial slices, rows posterior-ward, columns toward the patient's left, origin at voxel 0."""
    dz, dy, dx = spacing
    aff = np.zeros((4, 4))
    aff[0, 2], aff[1, 1], aff[2, 0], aff[3, 3] = dx, dy, dz, 1.0
    return aff


# ----------------------------------------------------------------------------------------------------
# DICOM
# ----------------------------------------------------------------------------------------------------
def _read_dicom_header(path: Path):
    from mmapps.inputs import read_dicom_header

    # The header only (no pixel data), after the input budget: regular file, the inflated size of a deflated
    # file, Rows x Columns x NumberOfFrames within the voxel limit. Pixels are read per file in _pixels.
    return read_dicom_header(path)


def _quiet():
    """pydicom warns (and logs) about every oddity of a damaged file; the CLI must print one error line only."""
    from mmapps.inputs import quiet_pydicom

    return quiet_pydicom()


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]


def _pixels(ds, path: Path) -> np.ndarray:
    from mmapps.inputs import read_dicom

    ds = read_dicom(path, header_checked=True)  # its header passed the budget checks; the series fits as a whole
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise UserError(f"{path}: DICOM file has no pixel data")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except Exception as e:
        raise UserError(f"{path}: DICOM image size tags are missing or invalid") from e
    if rows < 1 or cols < 1 or frames < 1 or rows * cols * frames > MAX_VOXELS:
        raise UserError(f"{path}: implausible image size {frames}x{rows}x{cols}")
    try:
        with _quiet():
            arr = ds.pixel_array  # compressed syntaxes decoded by pydicom's pillow/RLE handlers
    except Exception as e:
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "unknown")
        raise UserError(f"{path}: cannot decode pixel data (transfer syntax {ts}: {_short(e)})") from e
    arr = np.asarray(arr)
    if arr.ndim == 3 and frames == 1:  # RGB single frame
        raise UserError(f"{path}: colour (RGB) image, expected a greyscale CT/MR slice")
    if arr.ndim not in (2, 3) or arr.size == 0:
        raise UserError(f"{path}: unexpected pixel array shape {arr.shape}")
    return arr.astype(np.float32)


def _floats(ds, tag: str, n: int):
    try:
        v = [float(x) for x in ds.get(tag)]
        return v if len(v) == n and all(math.isfinite(x) for x in v) else None
    except Exception:
        return None


def _dicom_files(folder: Path) -> list[Path]:
    files = [p for p in sorted(folder.rglob("*")) if p.is_file() and not p.name.startswith(".")
             and p.name.upper() not in ("DICOMDIR",) and p.suffix.lower() not in (".txt", ".json", ".csv", ".md")]
    return files


def load_dicom(path: str | Path, require_ct: bool = True) -> Volume:
    """A DICOM series folder or a single (possibly multi-frame) DICOM file -> Volume."""
    with _quiet():  # pydicom converts tag values lazily and warns on damaged ones: keep stderr clean
        try:
            return _load_dicom(path, require_ct)
        except (UserError, MemoryError):
            raise
        except Exception as e:  # a damaged tag value surfaces lazily, wherever it is first read
            raise UserError(f"{path}: damaged DICOM data ({type(e).__name__}: {_short(e)})") from e


def _load_dicom(path: str | Path, require_ct: bool) -> Volume:
    path = Path(path)
    warnings: list[str] = []
    if path.is_dir():
        candidates = _dicom_files(path)
        headers, bad = [], []
        for f in candidates:
            try:
                headers.append((f, _read_dicom_header(f)))
            except UserError:
                bad.append(f)
        if not headers:
            what = f"{len(bad)} file(s), none of them DICOM" if bad else "no files"
            raise UserError(f"{path}: no DICOM files found ({what})")
        if bad:
            warnings.append(f"{path}: skipped {len(bad)} non-DICOM file(s) (e.g. {bad[0].name})")
        # One series only: group by SeriesInstanceUID and keep the largest.
        series: dict[str, list] = {}
        for f, ds in headers:
            series.setdefault(str(ds.get("SeriesInstanceUID", "unknown")), []).append((f, ds))
        if len(series) > 1:
            # The largest series, but a CT one when a CT is required (an MR series with more slices would
            # otherwise be picked and then refused as 'not CT').
            uid, items = max(series.items(), key=lambda kv: (not require_ct or _modality(kv[1][0][1]) == "CT",
                                                             len(kv[1])))
            warnings.append(f"{path}: {len(series)} series mixed in one folder; using the largest{' CT' if require_ct else ''} "
                            f"({len(items)} of {len(headers)} files, SeriesInstanceUID {uid})")
        else:
            items = next(iter(series.values()))
    elif path.is_file():
        items = [(path, _read_dicom_header(path))]
    else:
        raise UserError(f"{path}: no such file or folder")

    first_path, first = items[0]
    from mmapps.inputs import LIMITS, dicom_voxels

    total = sum(dicom_voxels(ds) for _, ds in items)
    if total > LIMITS.volume_voxels:  # declared by the headers, checked before any pixel is decoded
        raise UserError(f"{path}: the series declares {total:,} voxels in {len(items)} file(s), more than the "
                        f"{LIMITS.volume_voxels:,}-voxel limit")
    modality = str(first.get("Modality", "")).upper() or "unknown"
    if require_ct and modality != "CT":
        raise UserError(f"{first_path}: modality is {modality!r}, not CT (a CT study is required here; "
                        f"pass MRI with --mri)")
    if modality == "CT":
        for f, ds in items:
            if "RescaleSlope" not in ds or "RescaleIntercept" not in ds:
                raise UserError(f"{f}: CT slice lacks Rescale Slope/Intercept, cannot convert to HU")

    slices, positions, origins = [], [], []
    iop = _floats(first, "ImageOrientationPatient", 6)
    normal = np.cross(iop[:3], iop[3:]) if iop else np.array([0.0, 0.0, 1.0])
    for f, ds in items:
        arr = _pixels(ds, f)
        slope = float(ds.get("RescaleSlope", 1) or 1)
        inter = float(ds.get("RescaleIntercept", 0) or 0)
        if not (math.isfinite(slope) and math.isfinite(inter)):
            raise UserError(f"{f}: Rescale Slope/Intercept are not finite numbers")
        arr = arr * slope + inter
        frames = arr if arr.ndim == 3 else arr[None]
        if slices and frames.shape[1:] != slices[0].shape:
            raise UserError(f"{f}: slice size {frames.shape[1:]} differs from the series' {slices[0].shape}")
        ipp = _floats(ds, "ImagePositionPatient", 3)
        base = float(np.dot(ipp, normal)) if ipp else float(ds.get("InstanceNumber", len(positions)) or 0)
        thick = float(ds.get("SliceThickness", 1.0) or 1.0)
        for k, fr in enumerate(frames):
            slices.append(fr)
            positions.append(base + k * thick)
            origins.append(np.asarray(ipp, float) + k * thick * normal if ipp else None)
    if not any(_floats(ds, "ImagePositionPatient", 3) for _, ds in items):
        warnings.append(f"{path}: no Image Position (Patient); slices ordered by Instance Number")

    order = np.argsort(positions, kind="stable")
    pos = np.asarray(positions)[order]
    vol = np.stack([slices[i] for i in order])
    dz = float(first.get("SliceThickness", 1.0) or 1.0)
    if len(pos) > 1:
        keep, dz, note = _consistent_run(pos)
        if note:
            warnings.append(f"{path}: {note}")
        if len(keep) < len(vol):  # fancy indexing copies the whole volume: only when slices were dropped
            vol = vol[keep]
    else:
        keep = np.arange(1)
    ps = _floats(first, "PixelSpacing", 2) or [1.0, 1.0]
    spacing = (abs(dz) or 1.0, abs(ps[0]) or 1.0, abs(ps[1]) or 1.0)
    affine = None
    origin = origins[int(order[keep[0]])]
    if iop and origin is not None:
        affine = np.eye(4)
        affine[:3, 0] = normal * spacing[0]
        affine[:3, 1] = np.asarray(iop[3:]) * spacing[1]
        affine[:3, 2] = np.asarray(iop[:3]) * spacing[2]
        affine[:3, 3] = origin
    tags = {k: str(first.get(k, "") or "").strip() for k in ("BodyPartExamined", "PatientID", "StudyDate",
                                                                "StudyDescription", "SeriesDescription")}
    if vol.shape[0] == 1:
        warnings.append(f"{path}: a single slice, not a volume; the prediction rests on one 2D image")
    if not np.isfinite(vol).all():
        raise UserError(f"{path}: pixel data contains NaN or infinite values")
    return Volume(vol.astype(np.float32, copy=False), spacing, modality, str(path), warnings, affine, tags)


def _modality(ds) -> str:
    return str(ds.get("Modality", "")).upper()


def _consistent_run(pos: np.ndarray) -> tuple[np.ndarray, float, str]:
    """Indices of the longest run of evenly spaced slices, the spacing, and a warning if slices were dropped.

    Real series contain traps such as one slice 200 mm away from the rest, or duplicates.
    """
    diffs = np.diff(pos)
    step = float(np.median(diffs)) if len(diffs) else 1.0
    if step <= 1e-6:
        nz = diffs[diffs > 1e-6]
        step = float(np.median(nz)) if len(nz) else 1.0
    ok = np.abs(diffs - step) <= 0.5 * step  # neighbours at the usual distance
    best_start, best_len, start = 0, 1, 0
    for i, good in enumerate(ok):
        if not good:
            start = i + 1
        elif i + 2 - start > best_len:
            best_start, best_len = start, i + 2 - start
    keep = np.arange(best_start, best_start + best_len)
    note = ""
    if best_len < len(pos):
        dropped = len(pos) - best_len
        far = [f"{p:.1f}" for i, p in enumerate(pos) if i not in set(keep.tolist())][:4]
        note = (f"inconsistent slice spacing: {dropped} slice(s) far from the others (at {', '.join(far)} mm vs "
                f"{pos[keep[0]]:.1f}..{pos[keep[-1]]:.1f} mm) were dropped; kept {best_len} evenly spaced slices")
    return keep, step, note


# ----------------------------------------------------------------------------------------------------
# NIfTI
# ----------------------------------------------------------------------------------------------------
def load_nifti(path: str | Path) -> Volume:
    with _quiet():
        return _load_nifti(path)


def _load_nifti(path: str | Path) -> Volume:
    import nibabel as nib

    path = Path(path)
    try:
        from mmapps.inputs import check_nifti

        img = nib.as_closest_canonical(check_nifti(path))  # header dims within budget first; RAS orientation
        shape = img.shape
        if int(np.prod(shape)) > MAX_VOXELS:
            raise UserError(f"{path}: implausible image size {shape}")
        data = np.asarray(img.get_fdata(dtype=np.float32))
        zooms = [float(z) for z in img.header.get_zooms()[:3]]
        ras = np.asarray(img.affine, dtype=float)
    except UserError:
        raise
    except Exception as e:
        raise UserError(f"{path}: not a readable NIfTI file ({_short(e)})") from e
    warnings = []
    if data.ndim == 4:
        warnings.append(f"{path}: 4D image, using the first volume of {data.shape[3]}")
        data = data[..., 0]
    if data.ndim != 3 or min(data.shape) < 2:
        raise UserError(f"{path}: a 2D image (shape {tuple(data.shape)}), a 3D volume is required")
    if not np.isfinite(data).all():
        raise UserError(f"{path}: image contains NaN or infinite values")
    # RAS (x, y, z) -> our [z, row, col] with rows posterior-ward and cols toward patient left (LPS like DICOM).
    arr = np.ascontiguousarray(data.transpose(2, 1, 0)[:, ::-1, ::-1])
    zooms = (zooms + [1.0, 1.0, 1.0])[:3]
    # Our index (slice, row, col) = canonical voxel (nx-1-col, ny-1-row, slice); RAS -> LPS flips x and y.
    nx, ny = data.shape[0], data.shape[1]
    to_ijk = np.array([[0, 0, -1, nx - 1], [0, -1, 0, ny - 1], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras @ to_ijk
    return Volume(arr.astype(np.float32), (zooms[2], zooms[1], zooms[0]), "unknown", str(path), warnings, affine)


def load_volume(path: str | Path, require_ct: bool = False) -> Volume:
    """Dispatch on what the path is: NIfTI by suffix, otherwise DICOM (file or folder)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    name = path.name.lower()
    if path.is_file() and (name.endswith(".nii") or name.endswith(".nii.gz")):
        return load_nifti(path)
    if path.is_file() and path.suffix.lower() in (".png", ".jpg", ".jpeg", ".mha", ".mhd", ".nrrd", ".tif", ".tiff"):
        raise UserError(f"{path}: unsupported image format {path.suffix!r} (use a DICOM series/file or NIfTI)")
    return load_dicom(path, require_ct=require_ct)


def load_ct(path: str | Path) -> Volume:
    vol = load_volume(path, require_ct=True)
    if vol.modality == "unknown" and float(np.percentile(vol.array, 1)) >= -10:
        vol.warnings.append(f"{path}: intensities do not look like Hounsfield units (no air near -1000)")
    return vol


def load_mri(path: str | Path) -> Volume:
    vol = load_volume(path, require_ct=False)
    if vol.modality == "CT":
        vol.warnings.append(f"{path}: --mri is a CT series; used as the MRI input anyway")
    return vol


# ----------------------------------------------------------------------------------------------------
# DICOM writing (synthetic cohort)
# ----------------------------------------------------------------------------------------------------
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_dicom_series(out_dir: Path, volume: np.ndarray, spacing, *, modality: str, uid_root: str,
                       patient_id: str, patient_sex: str = "O", patient_age: int | None = None,
                       description: str = "") -> None:
    """Write [D,H,W] (HU for CT, arbitrary units for MR) as one series of uncompressed slices.

    UIDs are derived from ``uid_root`` (itself derived from the seed), dates are fixed: same input,
    byte-identical files.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    out_dir.mkdir(parents=True, exist_ok=True)
    dz, dy, dx = spacing
    D, H, W = volume.shape
    sop_class = CT_STORAGE if modality == "CT" else MR_STORAGE
    stored = _stored_values(volume, modality)
    z0 = -(D - 1) * dz / 2.0
    for k in range(D):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = f"{uid_root}.3.{k + 1}"
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(str(out_dir / f"{k + 1:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = f"{uid_root}.1"
        ds.SeriesInstanceUID = f"{uid_root}.2"
        ds.FrameOfReferenceUID = f"{uid_root}.4"
        ds.Modality = modality
        ds.PatientID = patient_id
        ds.PatientName = f"SYNTH^{patient_id}"
        ds.PatientSex = patient_sex
        if patient_age is not None:
            ds.PatientAge = f"{int(patient_age):03d}Y"
        ds.StudyDate = "20250101"  # fixed: reproducible bytes
        ds.SeriesDescription = description
        ds.SeriesNumber = 1 if modality == "CT" else 2
        ds.InstanceNumber = k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [f"{-(W - 1) * dx / 2:.3f}", f"{-(H - 1) * dy / 2:.3f}", f"{z0 + k * dz:.3f}"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceThickness = f"{dz:.3f}"
        ds.SpacingBetweenSlices = f"{dz:.3f}"
        ds.SliceLocation = f"{z0 + k * dz:.3f}"
        ds.PixelSpacing = [f"{dy:.4f}", f"{dx:.4f}"]
        ds.Rows, ds.Columns = H, W
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelRepresentation = 0
        if modality == "CT":
            ds.RescaleIntercept = "-1024"
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
            ds.KVP = "120"
            ds.WindowCenter, ds.WindowWidth = "-600", "1500"
        else:
            ds.MagneticFieldStrength = "1.5"
            ds.ScanningSequence = "SE"
            ds.EchoTime, ds.RepetitionTime = "15", "500"
        ds.PixelData = stored[k].tobytes()
        ds.save_as(out_dir / f"{k + 1:04d}.dcm", enforce_file_format=True)


def _stored_offset(modality: str) -> float:
    return 1024.0 if modality == "CT" else 0.0  # CT: rescale intercept -1024, slope 1


def _stored_values(volume: np.ndarray, modality: str) -> np.ndarray:
    """The 12-bit pixel values ``write_dicom_series`` stores."""
    return np.clip(np.round(volume + _stored_offset(modality)), 0, 4095).astype(np.uint16)


def as_read_back(volume: np.ndarray, spacing, *, modality: str, source: str, patient_id: str,
                 description: str = "") -> Volume:
    """The Volume ``load_dicom`` returns for a series ``write_dicom_series`` wrote, without writing it: the same
    12-bit values, header-rounded spacing and positions, affine and tags (tested equal). Lets the synthetic cohort
    keep only what the model reads from a thin-slice scan instead of 33 MB of DICOM per patient."""
    D, H, W = volume.shape
    dz, dy, dx = float(f"{spacing[0]:.3f}"), float(f"{spacing[1]:.4f}"), float(f"{spacing[2]:.4f}")
    origin = [float(f"{-(W - 1) * spacing[2] / 2:.3f}"), float(f"{-(H - 1) * spacing[1] / 2:.3f}"),
              float(f"{-(D - 1) * spacing[0] / 2:.3f}")]
    affine = np.eye(4)
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[:3, 3] = [0, 0, dz], [0, dy, 0], [dx, 0, 0], origin
    array = _stored_values(volume, modality).astype(np.float32) - np.float32(_stored_offset(modality))
    tags = {"BodyPartExamined": "", "PatientID": patient_id, "StudyDate": "20250101", "StudyDescription": "",
            "SeriesDescription": description}
    return Volume(array, (dz, dy, dx), modality, source, [], affine, tags)


# Patient records live in records.py; re-exported here so "io" stays the one door to real formats.
from .records import (RECORD_FIELDS, fhir_bundle, parse_fhir_bundle, read_record,  # noqa: E402,F401
                      validate_record)
