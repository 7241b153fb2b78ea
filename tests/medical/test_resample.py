"""The working grid and the CNN blocks match MONAI's (which the predict path does not import, for start-up time)."""
import types

import numpy as np
import pytest
import torch

from medical.io import default_affine
from medical.lungs import _resample
from mmapps.encoders import ResidualUnit


def _monai_grid(hu, vol, box, work_mm):
    """What MONAI's Orientation("SPL") + Spacing(bilinear, border) make of the same box."""
    from monai.data import MetaTensor
    from monai.transforms import Orientation, Spacing

    crop = np.ascontiguousarray(hu[tuple(slice(a, b) for a, b in box)])
    lps = vol.affine if vol.affine is not None else default_affine(vol.spacing)
    shift = np.eye(4)
    shift[:3, 3] = [a for a, _ in box]
    to_ras = np.diag([-1.0, -1.0, 1.0, 1.0])
    mt = MetaTensor(torch.from_numpy(crop)[None], affine=torch.as_tensor(to_ras @ lps @ shift, dtype=torch.float64))
    mt = Orientation(axcodes="SPL", labels=(("L", "R"), ("P", "A"), ("I", "S")))(mt)
    mt = Spacing(pixdim=(work_mm,) * 3, mode="bilinear", padding_mode="border")(mt)
    return mt[0].numpy(), to_ras @ np.asarray(mt.affine, dtype=float)


ROTATED = np.array([[0.7 * np.cos(0.2), -0.7 * np.sin(0.2), 0, 5], [0.7 * np.sin(0.2), 0.7 * np.cos(0.2), 0, 2],
                    [0, 0, 3.0, 1], [0, 0, 0, 1]])
PERMUTED_FLIPPED = np.array([[0, 0.7, 0, -100], [0.8, 0, 0, -50], [0, 0, -2.5, 30], [0, 0, 0, 1.0]])


@pytest.mark.parametrize("affine", [None, PERMUTED_FLIPPED, ROTATED], ids=["header-less", "permuted", "oblique"])
@pytest.mark.parametrize("box,work", [(((0, 23), (0, 40), (0, 37)), 1.5), (((2, 20), (5, 35), (3, 30)), 2.0)])
def test_working_grid_equals_monai_orientation_and_spacing(affine, box, work):
    hu = np.random.default_rng(0).normal(-500, 300, (23, 40, 37)).astype(np.float32)
    vol = types.SimpleNamespace(affine=affine, spacing=(2.5, 0.7, 0.8))
    grid, grid_affine = _resample(hu, vol, box, work)
    ref, ref_affine = _monai_grid(hu, vol, box, work)
    assert grid.shape == ref.shape
    np.testing.assert_allclose(grid_affine, ref_affine, atol=1e-9)
    np.testing.assert_allclose(grid, ref, atol=1e-2)  # HU; float32 rounding only


@pytest.mark.parametrize("cin,cout,strides,subunits", [(2, 16, 2, 2), (16, 32, 2, 1), (8, 8, 1, 1), (4, 8, 1, 2)])
def test_residual_unit_is_monais_with_the_same_weights(cin, cout, strides, subunits):
    from monai.networks.blocks import ResidualUnit as MonaiResidualUnit

    torch.manual_seed(0)
    theirs = MonaiResidualUnit(3, cin, cout, strides=strides, kernel_size=3, subunits=subunits, norm="batch").eval()
    ours = ResidualUnit(cin, cout, strides=strides, subunits=subunits).eval()
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, cin, 8, 8, 8)
    torch.testing.assert_close(ours(x), theirs(x))


def test_predict_imports_neither_monai_nor_dynamo():
    """Start-up is most of a CLI call: MONAI's package import (~9 s here) and torch._dynamo (~1.4 s) stay out."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    code = ("import sys\nfrom medical import Pipeline\n"
            "r = Pipeline.from_checkpoint(None).predict(study='data/medical/samples/patient/ct',"
            " record='data/medical/samples/patient/record.json')\n"
            "print(r['probability'] is not None, sorted(m for m in ('monai', 'torch._dynamo') if m in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split("\n")[-2] == "True []", p.stdout


def test_threaded_zoom_equals_one_affine_transform():
    """The working grid is interpolated in slabs on threads: every voxel must equal scipy's single call."""
    from scipy import ndimage

    from medical.lungs import _parallel_zoom

    a = np.random.default_rng(0).normal(size=(40, 30, 30)).astype(np.float32)
    matrix = np.array([40 / 70, 0.75, 1.5])
    shape = (70, 40, 20)
    assert np.array_equal(_parallel_zoom(a, matrix, shape),
                          ndimage.affine_transform(a, matrix, output_shape=shape, order=1, mode="nearest"))
