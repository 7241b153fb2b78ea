"""The cohort manifest (``manifest.csv``): one row per patient with the paths of its CT, MRI and record, the
label and, for synthetic cohorts, the oracle probability and the generating nodule/record variables."""
from __future__ import annotations

import csv
import io as _io
from pathlib import Path

from mmapps.errors import UserError

MANIFEST_COLUMNS = [
    "patient_id", "label", "oracle_probability", "logit", "ct", "mri", "record",
    "age", "sex", "family_history_lung_cancer", "education", "bmi", "copd", "personal_cancer_history",
    "smoking_status", "cigs_per_day", "smoking_years", "years_quit", "pack_years",
    "emphysema", "nodule_size_mm", "nodule_type", "spiculation", "upper_lobe", "nodule_count",
    "nodule_z_mm", "nodule_y_mm", "nodule_x_mm",
]


def manifest_text(rows: list[dict]) -> str:
    """Manifest rows -> CSV text with the columns above (written atomically by the caller)."""
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r[k] for k in MANIFEST_COLUMNS})
    return buf.getvalue()


def read_manifest(data: str | Path) -> tuple[Path, list[dict]]:
    """Find the cohort root (DATA or a folder above a split) and read manifest.csv (or its shard parts)."""
    from mmapps.inputs import read_text

    data = Path(data)
    if not data.exists():
        raise UserError(f"{data}: no such folder")
    root = data if data.is_dir() else data.parent
    files = [root / "manifest.csv"] if (root / "manifest.csv").exists() else sorted(root.glob("manifest.shard*.csv"))
    if not files:
        raise UserError(f"{data}: no manifest.csv (a cohort from `mmapps medical synth` or your own with columns "
                        f"patient_id, label, ct[, mri, record])")
    rows = []
    for f in files:
        reader = csv.DictReader(_io.StringIO(read_text(f, 256 * 2**20)))
        missing = {"patient_id", "ct"} - set(reader.fieldnames or [])
        if missing:
            raise UserError(f"{f}: manifest lacks column(s) {', '.join(sorted(missing))}")
        for line, row in enumerate(reader, start=2):
            _check_row(row, f, line)
            rows.append(row)
    if not rows:
        raise UserError(f"{files[0]}: manifest has no rows")
    return root, rows


def _check_row(row: dict, path: Path, line: int) -> None:
    """label must be 0/1 and oracle_probability a probability (when given): checked once, where the file is read."""
    import math

    label = (row.get("label") or "").strip()
    if label and label not in ("0", "1", "0.0", "1.0"):
        raise UserError(f"{path}: line {line}: label must be 0 or 1; got {label[:40]!r}")
    oracle = (row.get("oracle_probability") or "").strip()
    if oracle:
        try:
            value = float(oracle)
        except ValueError:
            value = math.nan
        if not 0.0 <= value <= 1.0:  # also false for NaN
            raise UserError(f"{path}: line {line}: oracle_probability must be a number in [0, 1]; got {oracle[:40]!r}")
