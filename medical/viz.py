"""Pictures: every reported nodule on its own axial slice with the lung-mask outline, the Grad-CAM of the most
suspicious nodule's crop, the probability, risk category and modality contributions; or the reasons a scan
could not be judged."""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

MAX_NODULE_PANELS = 6


def _axial_panel(ax, scan, z: int, nodules: list[dict], title: str) -> None:
    from matplotlib.patches import Circle

    win = dict(cmap="gray", vmin=-1000, vmax=300, interpolation="bilinear")
    ax.imshow(scan.hu[z], **win)
    ax.contour(scan.lung[z].astype(float), levels=[0.5], colors=["#00c8ff"], linewidths=0.8)
    for n in nodules:
        cz, cy, cx = n["center_voxel"]
        r = n["diameter_mm"] / 2 / scan.spacing_mm
        ax.add_patch(Circle((cx, cy), r * 1.4 + 2, fill=False, color="yellow", lw=1.2))
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def write_report(out_dir: Path, inputs: dict, cam: np.ndarray | None, result: dict) -> Path:
    """One PNG: nodule panels (or the not-assessable reasons) + Grad-CAM crop + modality contributions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mmapps.io import atomic_path

    study = inputs.get("study")
    name = (Path(str(study)).name if study is not None else "record") or "study"
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    path = Path(out_dir) / f"{name}_report.png"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    analysis = inputs.get("analysis")
    nodules = result.get("nodules", [])
    n_panels = max(1, min(len(nodules), MAX_NODULE_PANELS)) + 2
    fig = plt.figure(figsize=(3.4 * n_panels, 4.2))
    p, cat = result["probability"], result["risk_category"]
    colour = {"low": "tab:green", "intermediate": "tab:orange"}.get(cat, "black")
    head = f"malignancy probability {p:.1%}" if p is not None else "no probability"
    fig.suptitle(f"{head}  -  {cat.replace('_', ' ')}   (synthetic-data model, not for clinical use)",
                 color=colour, fontsize=11)
    scan = analysis["scan"] if analysis is not None else None
    if not result["assessable"]:
        preview = getattr(scan, "preview", None)
        ax = fig.add_subplot(1, 3, (1, 2)) if preview is not None else fig.add_subplot(1, 1, 1)
        width = 70 if preview is not None else 110
        text = "NOT ASSESSABLE\n\n" + "\n\n".join(textwrap.fill(r, width) for r in result["reasons"])
        ax.text(0.02, 0.95, text, ha="left", va="top", fontsize=9, family="monospace", transform=ax.transAxes)
        ax.axis("off")
        if preview is not None:  # what was refused, as read: a head, an abdomen, values off the HU scale
            image, (row_mm, col_mm) = preview
            lo, hi, how = -1000.0, 300.0, "HU -1000..300"
            if np.mean((image >= lo) & (image <= hi)) < 0.2:  # hardly anything in the HU window: show its own range
                lo, hi = (float(v) for v in np.percentile(image, [1, 99]))
                how = f"its own range {lo:.0f}..{hi:.0f}"
            ax = fig.add_subplot(1, 3, 3)
            ax.imshow(image, cmap="gray", vmin=lo, vmax=max(hi, lo + 1), aspect=row_mm / col_mm,
                      interpolation="bilinear")
            ax.set_title(f"middle slice as read ({how})\n{image.shape[1] * col_mm:.0f} x "
                         f"{image.shape[0] * row_mm:.0f} mm", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    else:
        if scan is not None and nodules:
            for i, n in enumerate(nodules[:MAX_NODULE_PANELS]):
                ax = fig.add_subplot(1, n_panels, i + 1)
                prob = f", p={n['probability']:.2f}" if n.get("probability") is not None else ""
                sure = f"P(nodule) {n['detection_score']:.2f}, " if n.get("detection_score") is not None else ""
                x, y, z = n["center_mm"]
                _axial_panel(ax, scan, n["center_voxel"][0], [n],
                             f"nodule {i + 1}: {n['diameter_mm']:.0f} mm {n['type']}{prob}\n"
                             f"{sure}LPS ({x:.0f}, {y:.0f}, {z:.0f}) mm")
        elif scan is not None:
            ax = fig.add_subplot(1, n_panels, 1)
            zr = scan.stats.get("lung_z_range") or [0, scan.hu.shape[0] - 1]
            _axial_panel(ax, scan, (zr[0] + zr[1]) // 2, [], "no nodule >= 4 mm found\n(lung mask outlined)")
        else:
            ax = fig.add_subplot(1, n_panels, 1)
            ax.text(0.5, 0.5, "no CT given:\nno nodule findings", ha="center", va="center", fontsize=11)
            ax.axis("off")
        ax = fig.add_subplot(1, n_panels, n_panels - 1)
        if cam is not None and inputs.get("samples") and "ct" in inputs["samples"][0]:
            k = int(np.argmax([n.get("probability") or 0 for n in nodules])) if nodules else 0
            crop = inputs["samples"][k]["ct"]["crop"][0].numpy()
            mid = crop.shape[0] // 2
            ax.imshow(crop[mid], cmap="gray", vmin=0, vmax=(300 + 1024) / 1424, interpolation="bilinear")
            if cam.shape == crop.shape and cam.max() > 0:
                ax.imshow(cam[mid], cmap="jet", alpha=0.3, vmin=0, vmax=float(cam.max()), interpolation="bilinear")
            ax.set_title("most suspicious nodule: model input\n+ Grad-CAM (crop CNN)", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        else:
            ax.axis("off")
        _contributions(fig.add_subplot(1, n_panels, n_panels), result)
    fig.tight_layout()
    with atomic_path(path, suffix=".tmp.png") as tmp:
        fig.savefig(tmp, dpi=80)
    plt.close(fig)
    return path


def _contributions(ax, result: dict) -> None:
    contrib = result["contributions"].get("masked_delta", {})
    names = list(contrib) or ["none"]
    vals = [contrib.get(n, 0.0) for n in names]
    ax.barh(names, vals, color=["tab:red" if v > 0 else "tab:blue" for v in vals])
    ax.axvline(0, color="black", lw=0.8)
    lim = max([abs(v) for v in vals] + [0.01]) * 1.5
    ax.set_xlim(-lim, lim)
    ax.locator_params(axis="x", nbins=5)
    ax.set_xlabel("probability change from each modality\n(all inputs minus that one masked)", fontsize=8)
    weights = result["contributions"].get("fusion_weights", {})
    # The attention weights only mix the learned embeddings for the head's residual; the measured CT variables and
    # the record also enter its linear Brock/PLCO term: "ct 0.00" beside a large CT contribution is no contradiction.
    ax.set_title("modality contributions\nresidual's fusion weights: "
                 + ", ".join(f"{k} {v:.2f}" for k, v in weights.items()), fontsize=8)
    for i, v in enumerate(vals):
        ax.text(v, i, f" {v:+.3f}", va="center", fontsize=8)


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
