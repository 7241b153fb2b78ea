"""Merge synthetic medical cohorts into one manifest that `mmapps medical train` reads (the studies stay where
they are: paths become absolute; patient IDs get a per-cohort prefix so they stay unique). Usage:

    .venv/bin/python scripts/merge_cohorts.py OUT COHORT[:N] COHORT[:N] ...

``:N`` keeps a cohort's first N patients (a learning curve: 600 + the first 600 of another cohort).
"""
import csv
import sys
from pathlib import Path

from medical.manifest import read_manifest


def main(out: str, cohorts: list[str]) -> int:
    merged = []
    for k, spec in enumerate(cohorts):
        folder, _, limit = spec.partition(":")
        root, rows = read_manifest(folder)  # the same checks (and shard parts) as `train` reads it with
        root = root.resolve()
        for row in rows[:int(limit)] if limit else rows:
            row["patient_id"] = f"{chr(ord('A') + k)}{row['patient_id']}"
            for col in ("ct", "mri", "record"):
                if row.get(col):
                    row[col] = str(root / row[col])
            merged.append(row)
    if not merged:
        raise SystemExit("no patients to merge")
    Path(out).mkdir(parents=True, exist_ok=True)
    with open(Path(out) / "manifest.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(merged[0]))
        writer.writeheader()
        writer.writerows(merged)
    print(f"{out}: {len(merged)} patients from {len(cohorts)} cohorts")
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    raise SystemExit(main(sys.argv[1], sys.argv[2:]))
