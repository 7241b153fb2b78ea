"""Bird's-eye-view geometry shared by NMS, the evaluator and the pipeline: rotated rectangles and their overlap.

Rotated IoU uses our own Sutherland-Hodgman clipping of convex quads (no shapely dependency for 30 lines).
"""
from __future__ import annotations

import numpy as np


def polygon_area(p: np.ndarray) -> float:
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def clip_polygon(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: intersection of a polygon with a convex counter-clockwise polygon."""
    out = subject
    for i in range(len(clip)):
        if len(out) == 0:
            break
        a, b = clip[i], clip[(i + 1) % len(clip)]
        edge = b - a

        def inside(p):
            return edge[0] * (p[1] - a[1]) - edge[1] * (p[0] - a[0]) >= -1e-12

        def cross_point(p, q):
            d = q - p
            den = edge[0] * d[1] - edge[1] * d[0]
            t = (edge[1] * (p[0] - a[0]) - edge[0] * (p[1] - a[1])) / den if abs(den) > 1e-15 else 0.0
            return p + t * d

        inp, out = out, []
        for j in range(len(inp)):
            p, q = inp[j], inp[(j + 1) % len(inp)]
            if inside(q):
                if not inside(p):
                    out.append(cross_point(p, q))
                out.append(q)
            elif inside(p):
                out.append(cross_point(p, q))
        out = np.array(out) if out else np.zeros((0, 2))
    return out


def bev_corners(cx, cy, l, w, yaw) -> np.ndarray:
    """Counter-clockwise [4, 2] rectangle with length l along the heading yaw."""
    c, s = np.cos(yaw), np.sin(yaw)
    d = np.array([[l / 2, w / 2], [-l / 2, w / 2], [-l / 2, -w / 2], [l / 2, -w / 2]])
    pts = np.c_[cx + c * d[:, 0] - s * d[:, 1], cy + s * d[:, 0] + c * d[:, 1]]
    return pts if polygon_area(pts) >= 0 else pts[::-1]


def rotated_intersection(a, b) -> float:
    """Area of the intersection of two rotated rectangles (cx, cy, l, w, yaw)."""
    return abs(polygon_area(clip_polygon(bev_corners(*a), bev_corners(*b))))


def in_camera_view(box, frame) -> bool:
    """KITTI labels only cover the camera view: True when the box centre projects into the image."""
    if frame.image is None:
        return True
    uv, depth = frame.calib.lidar_to_image(np.asarray(box[:3])[None])
    H, W = frame.image.shape[:2]
    return bool(depth[0] > 0.5 and 0 <= uv[0, 0] < W and 0 <= uv[0, 1] < H + 50)
