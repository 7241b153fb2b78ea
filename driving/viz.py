"""Pictures: bird's-eye view (points, boxes by class, ego car, range rings) and the camera image with
projected 3D boxes. Written atomically as PNG."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import Frame, box_corners, label_to_lidar_box

CLASS_COLOURS = {"Car": (0.1, 0.6, 1.0), "Pedestrian": (1.0, 0.3, 0.3), "Cyclist": (1.0, 0.8, 0.1),
                 "gt": (0.2, 0.9, 0.3)}


def _colour(cls):
    return CLASS_COLOURS.get(cls, (0.8, 0.8, 0.8))


def label_boxes(frame: Frame) -> list[np.ndarray]:
    """Lidar-frame boxes of every labelled object (any class but DontCare, which has no 3D box); [] without labels."""
    return [label_to_lidar_box(o, frame.calib) for o in frame.labels or [] if o.type != "DontCare"]


def _dashed(draw, a, b, fill, width=1, dash=6.0):
    """PIL draws no dashed lines: alternate dash-long segments from a to b."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = max(1, int(np.linalg.norm(b - a) / dash))
    for k in range(0, n, 2):
        draw.line([tuple(a + (b - a) * k / n), tuple(a + (b - a) * min(k + 1, n) / n)], fill=fill, width=width)


def bev_png(path, frame: Frame, objects: list[dict], gt_boxes: list | None = None, x_max: float = 70.0,
            y_abs: float = 40.0) -> Path:
    """Top view: lidar points coloured by height, detections (class colours, heading tick), GT (green, dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from mmapps.io import atomic_path

    p = frame.points
    keep = (p[:, 0] > -10) & (p[:, 0] < x_max) & (np.abs(p[:, 1]) < y_abs)
    p = p[keep][::2]
    fig, ax = plt.subplots(figsize=(7, 8), dpi=100)
    ax.set_facecolor("black")
    ax.scatter(-p[:, 1], p[:, 0], s=0.15, c=np.clip(p[:, 2], -2, 1), cmap="viridis", linewidths=0)
    for r in (10, 20, 30, 40, 50, 60, 70):
        ax.add_patch(plt.Circle((0, 0), r, fill=False, color="0.4", lw=0.5, ls=":"))
        ax.text(0.5, r + 0.3, f"{r} m", color="0.6", fontsize=6)
    ax.add_patch(plt.Rectangle((-0.8, -2.7), 1.6, 4.0, color="white"))  # ego car (lidar at its roof)
    for b in gt_boxes or []:
        c = box_corners(np.asarray(b))[:4]
        ax.plot(np.r_[-c[:, 1], -c[0, 1]], np.r_[c[:, 0], c[0, 0]], color=CLASS_COLOURS["gt"], lw=0.8, ls="--")
    for o in objects:
        b = o["box3d"]
        box = np.array([b["x"], b["y"], b["z"], b["l"], b["w"], b["h"], b["yaw"]])
        c = box_corners(box)[:4]
        col = _colour(o["class"])
        ax.plot(np.r_[-c[:, 1], -c[0, 1]], np.r_[c[:, 0], c[0, 0]], color=col, lw=1.2)
        front = (c[0] + c[1]) / 2
        ax.plot([-box[1], -front[1]], [box[0], front[0]], color=col, lw=1.2)
        label = o["class"][:3] + (f" #{o['track_id']}" if "track_id" in o else "")
        ax.text(-b["y"] + 1.0, b["x"], f"{label} {o['score']:.2f}", color=col, fontsize=6)
    ax.set_xlim(-y_abs, y_abs)
    ax.set_ylim(-10, x_max)
    ax.set_aspect("equal")
    # the picture's horizontal axis is -y (left of the car on the left): label the ticks with y itself
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{-v:g}" if v else "0"))
    ax.set_xlabel("y (m): + left of the car, - right")
    ax.set_ylabel("x forward (m)")
    ax.set_title(f"frame {frame.id}: {len(objects)} objects (BEV, lidar frame)", fontsize=9)
    handles = [plt.Line2D([], [], color=_colour(k), label=k) for k in ("Car", "Pedestrian", "Cyclist")]
    if gt_boxes:
        handles.append(plt.Line2D([], [], color=CLASS_COLOURS["gt"], ls="--", label="label"))
    ax.legend(handles=handles, loc="lower right", fontsize=7, facecolor="0.2", labelcolor="white")
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def camera_png(path, frame: Frame, objects: list[dict], gt_boxes: list | None = None) -> Path:
    """The camera image with the 3D boxes projected (front face thicker) and class/score tags; labelled boxes
    (``gt_boxes``, lidar frame) dashed in green."""
    from PIL import Image, ImageDraw

    from mmapps.io import atomic_path

    im = Image.fromarray(np.ascontiguousarray(frame.image)).convert("RGB")
    draw = ImageDraw.Draw(im)
    edges = [(0, 1), (1, 2), (2, 3), (3, 0), (4, 5), (5, 6), (6, 7), (7, 4), (0, 4), (1, 5), (2, 6), (3, 7)]
    green = tuple(int(255 * v) for v in CLASS_COLOURS["gt"])
    for b in gt_boxes or []:
        uv, depth = frame.calib.lidar_to_image(box_corners(np.asarray(b)))
        if (depth < 0.5).any():
            continue
        for i, j in edges:
            _dashed(draw, uv[i], uv[j], green, width=2)
    for o in objects:
        b = o["box3d"]
        box = np.array([b["x"], b["y"], b["z"], b["l"], b["w"], b["h"], b["yaw"]])
        corners = box_corners(box)
        uv, depth = frame.calib.lidar_to_image(corners)
        if (depth < 0.5).any():
            continue
        col = tuple(int(255 * v) for v in _colour(o["class"]))
        for i, j in edges:
            front = {i, j} <= {0, 1, 4, 5}
            draw.line([tuple(uv[i]), tuple(uv[j])], fill=col, width=3 if front else 1)
        l, t = uv.min(0)
        draw.text((float(l), float(t) - 11), f"{o['class']} {o['score']:.2f}", fill=col)
    if gt_boxes:
        draw.text((8, 8), "dashed green: labels (label_2)", fill=green)
    with atomic_path(path, suffix=".png") as tmp:
        im.save(tmp, format="PNG")
    return Path(path)
