"""Pictures: axial + coronal CT slices through the most suspicious region with the Grad-CAM overlay,
the probability, risk category and modality contributions."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _cam_slice(cam, box, shape, axis: int, index: int):
    """The Grad-CAM (computed on the lung-box grid) resampled onto one full-resolution slice."""
    import torch
    import torch.nn.functional as F

    box = box or [(0, s) for s in shape]
    (z0, z1), (y0, y1), (x0, x1) = box
    lo, hi = box[axis]
    if not lo <= index < hi:
        return np.zeros([s for i, s in enumerate(shape) if i != axis], np.float32)
    g = cam.shape[axis]
    k = min(g - 1, int((index - lo) / max(hi - lo, 1) * g))
    plane = np.take(cam, k, axis=axis)
    size = [b - a for i, (a, b) in enumerate(box) if i != axis]
    up = F.interpolate(torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None, None], size=size,
                       mode="bilinear", align_corners=False)[0, 0].numpy()
    full = np.zeros([s for i, s in enumerate(shape) if i != axis], np.float32)
    (a0, a1), (b0, b1) = [b for i, b in enumerate(box) if i != axis]
    full[a0:a1, b0:b1] = up
    return full


def write_report(out_dir: Path, views: dict, cam: np.ndarray | None, result: dict, study=None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmapps.io import atomic_path

    name = (Path(str(study)).name if study is not None else "record") or "study"
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = Path(out_dir) / f"{name}_report.png"
    hu = views.get("hu")
    fig = plt.figure(figsize=(15, 4.6))
    p, cat = result["probability"], result["risk_category"]
    colour = {"low": "tab:green", "intermediate": "tab:orange", "high": "tab:red"}[cat]
    fig.suptitle(f"malignancy probability {p:.1%}  -  {cat} risk   (synthetic-data model, not for clinical use)",
                 color=colour, fontsize=12)
    if hu is not None:
        cand = views["candidate"]
        z, y, x = cand["centre"]  # the most suspicious region: thickest dense structure in the lungs
        dz, dy, dx = views.get("spacing", (1.0, 1.0, 1.0))
        win = dict(cmap="gray", vmin=-1000, vmax=300, interpolation="bilinear")
        ax1 = fig.add_subplot(1, 4, 1)
        ax1.imshow(hu[z], aspect=dy / dx, **win)
        ax2 = fig.add_subplot(1, 4, 2)
        ax2.imshow(hu[:, y, :][::-1], aspect=dz / dx, **win)  # superior up
        if cam is not None and cam.max() > 0:
            kw = dict(cmap="jet", alpha=0.3, vmin=0, vmax=float(cam.max()), interpolation="bilinear")
            ax1.imshow(_cam_slice(cam, cand["box"], hu.shape, 0, z), aspect=dy / dx, **kw)
            ax2.imshow(_cam_slice(cam, cand["box"], hu.shape, 1, y)[::-1], aspect=dz / dx, **kw)
        ax1.plot(x, y, marker="o", mfc="none", color="yellow", ms=18)
        ax2.plot(x, hu.shape[0] - 1 - z, marker="o", mfc="none", color="yellow", ms=18)
        ax1.set_title(f"axial slice {z + 1}/{hu.shape[0]}" + (" + Grad-CAM" if cam is not None else ""))
        ax2.set_title(f"coronal row {y + 1}/{hu.shape[1]} (superior up)")
        ax3 = fig.add_subplot(1, 4, 3)
        crop = views["crop"]
        ax3.imshow(crop[crop.shape[0] // 2], cmap="gray", vmin=0, vmax=(300 + 1024) / 1424, interpolation="bilinear")
        crop_cam = views.get("crop_cam")
        if crop_cam is not None and crop_cam.shape == crop.shape and crop_cam.max() > 0:
            ax3.imshow(crop_cam[crop.shape[0] // 2], cmap="jet", alpha=0.3, vmin=0, vmax=float(crop_cam.max()),
                       interpolation="bilinear")
        ax3.set_title(f"nodule-centred crop (model input) + Grad-CAM\nthickness radius {cand['radius_mm']:.1f} mm",
                      fontsize=9)
        for ax in (ax1, ax2, ax3):
            ax.set_xticks([])
            ax.set_yticks([])
        findings = result.get("ct_findings")
        if findings:
            ax3.set_xlabel(f"model reads: {findings['nodule_size_mm']} mm, {findings['nodule_type']}, "
                           f"spiculated p={findings['spiculation_probability']:.2f}", fontsize=8)
    else:
        ax = fig.add_subplot(1, 4, (1, 3))
        ax.text(0.5, 0.5, "no CT given", ha="center", va="center", fontsize=14)
        ax.axis("off")
    ax4 = fig.add_subplot(1, 4, 4)
    contrib = result["contributions"].get("masked_delta", {})
    names = list(contrib) or ["none"]
    vals = [contrib.get(n, 0.0) for n in names]
    ax4.barh(names, vals, color=["tab:red" if v > 0 else "tab:blue" for v in vals])
    ax4.axvline(0, color="black", lw=0.8)
    lim = max([abs(v) for v in vals] + [0.01]) * 1.5
    ax4.set_xlim(-lim, lim)
    ax4.locator_params(axis="x", nbins=5)
    ax4.set_xlabel("probability change from each modality\n(all inputs minus that one masked)", fontsize=9)
    weights = result["contributions"].get("fusion_weights", {})
    ax4.set_title("modality contributions\nfusion weights: " + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()),
                  fontsize=9)
    for i, v in enumerate(vals):
        ax4.text(v, i, f" {v:+.3f}", va="center", fontsize=9)
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path


def plot_calibration(y, p, path: Path, title: str = "calibration") -> Path:
    """Reliability diagram (sklearn calibration_curve) for the evaluation report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.calibration import calibration_curve

    from mmapps.io import atomic_path

    frac, mean = calibration_curve(y, p, n_bins=10, strategy="quantile")
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.plot(mean, frac, "o-")
    ax.set_xlabel("predicted probability")
    ax.set_ylabel("observed frequency")
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return path
