"""A folder mixing a CT series with a larger MR series: the CT reader takes the CT, with a warning (it used to
take the MR series by size and then refuse it as 'not CT')."""
from __future__ import annotations

import shutil

import numpy as np

from medical.io import load_ct, load_mri, write_dicom_series

from .harness import ROOT


def test_ct_reader_prefers_the_ct_series_over_a_larger_mr_series(tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(ROOT / "data" / "medical" / "samples" / "patient" / "ct", folder / "ct")
    write_dicom_series(folder / "mr", np.full((80, 16, 16), 300.0, np.float32), (2.0, 1.0, 1.0), modality="MR",
                       uid_root="1.2.826.0.1.999", patient_id="MIX")
    ct = load_ct(folder)
    assert ct.modality == "CT" and ct.array.shape[0] == 64
    assert any("2 series mixed" in w and "largest CT" in w for w in ct.warnings)
    assert load_mri(folder).modality == "MR"  # without the CT requirement the largest series wins
