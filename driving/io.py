"""KITTI formats in and out: velodyne .bin, image_2 PNG, label_2, calib (object + raw trio), oxts.

Every reader validates what it reads and raises ``UserError`` naming the file and the problem, so the
CLI can print one ``error:`` line. Coordinate frames: lidar (x fwd, y left, z up), rectified camera
(x right, y down, z fwd); labels live in the rectified camera frame, our boxes in the lidar frame.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mmapps.errors import UserError

CLASSES = ("Car", "Pedestrian", "Cyclist")
OXTS_FIELDS = ("lat", "lon", "alt", "roll", "pitch", "yaw", "vn", "ve", "vf", "vl", "vu", "ax", "ay", "az", "af",
               "al", "au", "wx", "wy", "wz", "wf", "wl", "wu", "pos_accuracy", "vel_accuracy", "navstat",
               "numsats", "posmode", "velmode", "orimode")
EARTH_RADIUS = 6378137.0  # pykitti / KITTI devkit Mercator constant


# ----------------------------------------------------------------------------------------------- velodyne
def read_velodyne(path, dims: int = 4) -> np.ndarray:
    """float32 [N, 4] (x, y, z, reflectance). dims=5 reads nuScenes clouds (the 5th value is dropped)."""
    path = Path(path)
    if dims not in (4, 5):
        raise UserError(f"point dims must be 4 (KITTI) or 5 (nuScenes); got {dims}")
    from mmapps.inputs import check_points_file, read_bytes

    check_points_file(path, dims)  # regular file, point count from the size within budget, before reading
    raw = read_bytes(path, what="lidar file")
    if len(raw) == 0:
        raise UserError(f"{path}: empty point cloud (0 bytes)")
    if len(raw) % (4 * dims):
        raise UserError(f"{path}: size {len(raw)} bytes is not a multiple of {4 * dims} "
                        f"(float32 x {dims} per point): truncated or not a velodyne .bin")
    if dims == 5 and len(raw) % 16 == 0:
        _refuse_kitti_read_as_five(raw, path)
    pts = np.frombuffer(raw, dtype="<f4").reshape(-1, dims)[:, :4].copy()
    if not np.isfinite(pts).all():
        bad = int((~np.isfinite(pts)).any(axis=1).sum())
        raise UserError(f"{path}: {bad} points contain NaN or inf")
    return pts


def unit_reflectance(points: np.ndarray) -> tuple[np.ndarray, str | None]:
    """The cloud with its reflectance in KITTI's [0, 1], and a note when it had to be scaled (else None).

    KITTI stores reflectance as a float in [0, 1]; nuScenes and many drivers' exports store an 8-bit intensity
    (0-255), some a 16-bit one. The detector was trained on [0, 1] and clips above 1, so such a cloud would read as
    uniformly bright (the real KITTI frames with their reflectance x255, unscaled: 1 of 000008's 6 cars found instead of
    3, and 2 false boxes on 000001 instead of 0). Above 2 up to 255 the values are read as 8 bit, up to 65535 as 16
    bit; anything else above 1 is divided by its maximum. Returns a scaled copy (the input is not changed). A cloud
    whose reflectance is 0 everywhere comes back unchanged, with a note that it has none.
    """
    r = points[:, 3]
    top = float(r.max()) if len(r) else 0.0
    if len(r) and top == 0.0 and float(r.min()) == 0.0:
        # measured: the real frames with every reflectance 0 put 1 / 3 false boxes on 000001 / 000008 (0 / 2)
        return points, ("lidar reflectance is 0 for every point (a sensor or export without intensity): the detector "
                        "was trained with reflectance and may find less and err more")
    if top <= 1.0 + 1e-3:
        return points, None
    scale, what = (255.0, "an 8-bit intensity") if 2.0 < top <= 255.0 else \
        (65535.0, "a 16-bit intensity") if 255.0 < top <= 65535.0 else (top, "an unknown scale")
    out = points.copy()
    out[:, 3] = r / scale
    return out, (f"lidar reflectance goes up to {top:g}, not KITTI's [0, 1]: read as {what} and divided by "
                 f"{scale:g}")


def _refuse_kitti_read_as_five(raw: bytes, path) -> None:
    """A KITTI cloud (4 values per point) whose size happens to divide by 20 is not a nuScenes cloud: its
    reflectance is in [0, 1] read as 4 values, while read as 5 the 5th value (the ring index) is not an integer."""
    five = np.frombuffer(raw, dtype="<f4").reshape(-1, 5)[:, 4]
    ring_like = np.isfinite(five).all() and ((five >= 0) & (five < 128) & (five == np.round(five))).all()
    refl = np.frombuffer(raw, dtype="<f4").reshape(-1, 4)[:, 3]
    if not ring_like and np.isfinite(refl).all() and ((refl >= 0) & (refl <= 1)).all():
        raise UserError(f"{path}: --point-dims 5 does not fit this file: read as 4 values per point (KITTI) every "
                        f"reflectance is in [0, 1], read as 5 the 5th value is not a ring index; use --point-dims 4")


def write_velodyne(path, points: np.ndarray) -> None:
    from mmapps.io import atomic_write_bytes

    atomic_write_bytes(path, np.ascontiguousarray(points[:, :4], dtype="<f4").tobytes())


# ----------------------------------------------------------------------------------------------- image
def read_image(path) -> np.ndarray:
    """uint8 [H, W, 3] RGB."""
    from PIL import Image, UnidentifiedImageError

    import warnings

    from mmapps.inputs import check_image

    path = Path(path)
    check_image(path)  # regular file, pixel budget from the header before decoding
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's DecompressionBombWarning: the size was checked above
            with Image.open(path) as im:
                return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"{path}: not a readable image ({type(e).__name__})") from None


def write_image(path, image: np.ndarray) -> None:
    from PIL import Image

    from mmapps.io import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


# ----------------------------------------------------------------------------------------------- calib
@dataclass
class Calib:
    """P2 (3x4), R0 (3x3), V2C = Tr_velo_to_cam (3x4), I2V = Tr_imu_to_velo (3x4)."""
    P2: np.ndarray
    R0: np.ndarray
    V2C: np.ndarray
    I2V: np.ndarray = field(default_factory=lambda: np.hstack([np.eye(3), np.zeros((3, 1))]))

    @staticmethod
    def _h(m: np.ndarray) -> np.ndarray:
        out = np.eye(4)
        out[: m.shape[0], : m.shape[1]] = m
        return out

    @property
    def velo_to_rect(self) -> np.ndarray:
        """4x4: lidar -> rectified camera (R0_rect * Tr_velo_to_cam)."""
        return self._h(self.R0) @ self._h(self.V2C)

    def lidar_to_rect(self, pts: np.ndarray) -> np.ndarray:
        p = np.c_[pts[:, :3], np.ones(len(pts))]
        return (p @ self.velo_to_rect.T)[:, :3]

    def rect_to_lidar(self, pts: np.ndarray) -> np.ndarray:
        p = np.c_[pts[:, :3], np.ones(len(pts))]
        return (p @ np.linalg.inv(self.velo_to_rect).T)[:, :3]

    def rect_to_image(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (uv [N, 2], depth [N])."""
        p = np.c_[pts[:, :3], np.ones(len(pts))] @ self.P2.T
        depth = p[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            uv = p[:, :2] / depth[:, None]
        return uv, depth

    def lidar_to_image(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.rect_to_image(self.lidar_to_rect(pts))

    def check_image(self, shape, image_path="image") -> None:
        """The principal point must sit inside the central half of the image, or calib and image disagree."""
        h, w = shape[:2]
        cx, cy = self.P2[0, 2], self.P2[1, 2]
        if not (0.25 * w <= cx <= 0.75 * w and 0.25 * h <= cy <= 0.75 * h):
            raise UserError(f"{image_path}: image size {w}x{h} does not fit the calibration "
                            f"(principal point {cx:.1f},{cy:.1f})")

    def to_text(self) -> str:
        def row(name, m):
            return f"{name}: " + " ".join(f"{v:.12e}" for v in np.asarray(m).ravel())
        P0 = self.P2.copy()
        P0[:, 3] = 0
        return "\n".join([row("P0", P0), row("P1", P0), row("P2", self.P2), row("P3", self.P2),
                          row("R0_rect", self.R0), row("Tr_velo_to_cam", self.V2C),
                          row("Tr_imu_to_velo", self.I2V)]) + "\n"


def _parse_key_values(path: Path) -> dict[str, np.ndarray]:
    from mmapps.inputs import read_text

    text = read_text(path, 2**20, "calibration file")  # regular file, capped, strict UTF-8 naming the line
    out = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or ":" not in line:
            continue
        key, _, vals = line.partition(":")
        try:
            out[key.strip()] = np.array([float(v) for v in vals.split()], dtype=np.float64)
        except ValueError:
            if key.strip() == "calib_time":
                continue
            raise UserError(f"{path}: line {n} ({key.strip()}) has a non-numeric value") from None
    return out


def _need(kv: dict, path: Path, key: str, n: int, alt: str | None = None) -> np.ndarray:
    v = kv.get(key, kv.get(alt) if alt else None)
    if v is None:
        raise UserError(f"{path}: calibration key {key} is missing")
    if v.size != n:
        raise UserError(f"{path}: {key} has {v.size} values, expected {n}")
    if not np.isfinite(v).all():
        raise UserError(f"{path}: {key} contains NaN or inf")
    return v


def read_calib(path) -> Calib:
    """KITTI object-benchmark calib file (P0-P3, R0_rect, Tr_velo_to_cam, optional Tr_imu_to_velo)."""
    path = Path(path)
    kv = _parse_key_values(path)
    P2 = _need(kv, path, "P2", 12).reshape(3, 4)
    R0 = _need(kv, path, "R0_rect", 9, alt="R0").reshape(3, 3)
    V2C = _need(kv, path, "Tr_velo_to_cam", 12, alt="Tr_velo_cam").reshape(3, 4)
    I2V = (_need(kv, path, "Tr_imu_to_velo", 12, alt="Tr_imu_velo").reshape(3, 4)
           if ("Tr_imu_to_velo" in kv or "Tr_imu_velo" in kv) else np.hstack([np.eye(3), np.zeros((3, 1))]))
    if abs(P2[2, 2]) < 1e-9 or abs(np.linalg.det(R0)) < 1e-6:
        raise UserError(f"{path}: P2/R0_rect are degenerate")
    return Calib(P2, R0, V2C, I2V)


def read_raw_calib(folder) -> Calib:
    """KITTI raw calib trio: calib_cam_to_cam.txt, calib_velo_to_cam.txt, calib_imu_to_velo.txt."""
    folder = Path(folder)
    c2c = folder / "calib_cam_to_cam.txt"
    v2c = folder / "calib_velo_to_cam.txt"
    i2v = folder / "calib_imu_to_velo.txt"
    kc, kv, ki = _parse_key_values(c2c), _parse_key_values(v2c), _parse_key_values(i2v)
    P2 = _need(kc, c2c, "P_rect_02", 12).reshape(3, 4)
    R0 = _need(kc, c2c, "R_rect_00", 9).reshape(3, 3)
    V2C = np.hstack([_need(kv, v2c, "R", 9).reshape(3, 3), _need(kv, v2c, "T", 3).reshape(3, 1)])
    I2V = np.hstack([_need(ki, i2v, "R", 9).reshape(3, 3), _need(ki, i2v, "T", 3).reshape(3, 1)])
    return Calib(P2, R0, V2C, I2V)


# ----------------------------------------------------------------------------------------------- labels
@dataclass
class Object3D:
    """One label_2 row. h, w, l in metres; x, y, z = bottom centre in the rectified camera frame."""
    type: str
    truncated: float
    occluded: int
    alpha: float
    box2d: tuple[float, float, float, float]
    h: float
    w: float
    l: float
    x: float
    y: float
    z: float
    ry: float
    score: float | None = None

    def to_line(self) -> str:
        vals = [self.type, f"{self.truncated:.2f}", str(int(self.occluded)), f"{self.alpha:.2f}",
                *(f"{v:.2f}" for v in self.box2d), f"{self.h:.2f}", f"{self.w:.2f}", f"{self.l:.2f}",
                f"{self.x:.2f}", f"{self.y:.2f}", f"{self.z:.2f}", f"{self.ry:.2f}"]
        if self.score is not None:
            vals.append(f"{self.score:.4f}")
        return " ".join(vals)


def parse_label_text(text: str, path="label", with_score: bool | None = None) -> list[Object3D]:
    objs = []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) not in (15, 16) or (with_score is True and len(parts) != 16) or \
                (with_score is False and len(parts) != 15):
            raise UserError(f"{path}: line {n} has {len(parts)} columns, expected 15 (labels) or 16 (results)")
        try:
            v = [float(x) for x in parts[1:]]
        except ValueError:
            raise UserError(f"{path}: line {n} has a non-numeric value") from None
        if not all(math.isfinite(x) for x in v):
            raise UserError(f"{path}: line {n} contains NaN or inf")
        objs.append(Object3D(parts[0], v[0], int(v[1]), v[2], tuple(v[3:7]), v[7], v[8], v[9], v[10], v[11],
                             v[12], v[13], v[14] if len(v) == 15 else None))
    return objs


def read_label(path, with_score: bool | None = None) -> list[Object3D]:
    path = Path(path)
    from mmapps.inputs import read_text

    text = read_text(path, 16 * 2**20, "label file")  # regular file (a FIFO would hang), capped, strict UTF-8
    return parse_label_text(text, path, with_score)


def write_label(path, objects: list[Object3D]) -> None:
    from mmapps.io import atomic_write_text

    atomic_write_text(path, "".join(o.to_line() + "\n" for o in objects))


# ----------------------------------------------------------------------------------------------- boxes
def label_to_lidar_box(o: Object3D, calib: Calib) -> np.ndarray:
    """-> [x, y, z, l, w, h, yaw] with the centre (not the bottom) in the lidar frame."""
    c = calib.rect_to_lidar(np.array([[o.x, o.y - o.h / 2, o.z]]))[0]
    return np.array([c[0], c[1], c[2], o.l, o.w, o.h, -o.ry - np.pi / 2])


def lidar_box_to_label(box: np.ndarray, calib: Calib, cls: str, score: float | None = None,
                       image_shape=None) -> Object3D:
    x, y, z, l, w, h, yaw = map(float, box[:7])
    c = calib.lidar_to_rect(np.array([[x, y, z]]))[0]
    ry = wrap_angle(-yaw - np.pi / 2)
    box2d = project_box2d(box, calib, image_shape)
    alpha = wrap_angle(ry - math.atan2(c[0], c[2]))
    return Object3D(cls, 0.0, 0, alpha, box2d, h, w, l, c[0], c[1] + h / 2, c[2], ry, score)


def wrap_angle(a):
    return (a + np.pi) % (2 * np.pi) - np.pi


def box_corners(box: np.ndarray) -> np.ndarray:
    """[8, 3] corners of a lidar-frame box (bottom four first)."""
    x, y, z, l, w, h, yaw = box[:7]
    dx = np.array([1, 1, -1, -1, 1, 1, -1, -1]) * l / 2
    dy = np.array([1, -1, -1, 1, 1, -1, -1, 1]) * w / 2
    dz = np.array([-1, -1, -1, -1, 1, 1, 1, 1]) * h / 2
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([x + c * dx - s * dy, y + s * dx + c * dy, z + dz], axis=1)


def project_box2d(box: np.ndarray, calib: Calib, image_shape=None) -> tuple[float, float, float, float]:
    """Tight image box of the projected 3D corners (clipped to the image when its shape is given)."""
    corners = box_corners(np.asarray(box))
    rect = calib.lidar_to_rect(corners)
    rect[:, 2] = np.maximum(rect[:, 2], 0.1)  # corners behind the camera: clamp to the near plane
    uv, _ = calib.rect_to_image(rect)
    l, t = uv.min(0)
    r, b = uv.max(0)
    if image_shape is not None:
        H, W = image_shape[:2]
        l, r = np.clip([l, r], 0, W - 1)
        t, b = np.clip([t, b], 0, H - 1)
    return float(l), float(t), float(r), float(b)


# ----------------------------------------------------------------------------------------------- oxts
def read_oxts(path) -> np.ndarray:
    """One oxts packet: float64 [30]."""
    path = Path(path)
    from mmapps.inputs import read_text

    parts = read_text(path, 2**20, "oxts file").split()
    if len(parts) != 30:
        raise UserError(f"{path}: oxts packet has {len(parts)} fields, expected 30")
    try:
        v = np.array([float(p) for p in parts])
    except ValueError:
        raise UserError(f"{path}: oxts packet has a non-numeric field") from None
    if not np.isfinite(v).all() or abs(v[0]) > 90 or abs(v[1]) > 180:
        raise UserError(f"{path}: oxts packet has an impossible lat/lon or NaN")
    return v


def write_oxts(path, packet: np.ndarray) -> None:
    from mmapps.io import atomic_write_text

    fmt = ["%.14f"] * 25 + ["%d"] * 5
    atomic_write_text(path, " ".join(f % v for f, v in zip(fmt, packet)) + "\n")


def oxts_pose(packet: np.ndarray, scale: float) -> np.ndarray:
    """4x4 T_w_imu as pykitti: Mercator x/y (scale = cos(lat0)), z = altitude, R = Rz(yaw) Ry(pitch) Rx(roll)."""
    lat, lon, alt, roll, pitch, yaw = packet[:6]
    tx = scale * lon * np.pi * EARTH_RADIUS / 180.0
    ty = scale * EARTH_RADIUS * np.log(np.tan((90.0 + lat) * np.pi / 360.0))
    cr, sr, cp, sp, cy, sy = np.cos(roll), np.sin(roll), np.cos(pitch), np.sin(pitch), np.cos(yaw), np.sin(yaw)
    Rx = np.array([[1, 0, 0], [0, cr, -sr], [0, sr, cr]])
    Ry = np.array([[cp, 0, sp], [0, 1, 0], [-sp, 0, cp]])
    Rz = np.array([[cy, -sy, 0], [sy, cy, 0], [0, 0, 1]])
    T = np.eye(4)
    T[:3, :3] = Rz @ Ry @ Rx
    T[:3, 3] = [tx, ty, alt]
    return T


def mercator_to_latlon(tx, ty, scale: float):
    lon = np.asarray(tx) * 180.0 / (np.pi * EARTH_RADIUS * scale)
    lat = 360.0 / np.pi * np.arctan(np.exp(np.asarray(ty) / (EARTH_RADIUS * scale))) - 90.0
    return lat, lon


def lidar_to_world(points: np.ndarray, packet: np.ndarray, calib: Calib, lat0: float | None = None) -> np.ndarray:
    """Lidar-frame points -> [N, 2] (lat, lon) through Tr_imu_to_velo and the oxts pose."""
    scale = math.cos(math.radians(packet[0] if lat0 is None else lat0))
    T_w_imu = oxts_pose(packet, scale)
    T_velo_imu = np.linalg.inv(Calib._h(calib.I2V))
    p = np.c_[points[:, :3], np.ones(len(points))] @ (T_w_imu @ T_velo_imu).T
    lat, lon = mercator_to_latlon(p[:, 0], p[:, 1], scale)
    return np.stack([lat, lon], axis=1)


def latlon_to_mercator(lat, lon, scale: float):
    tx = scale * np.asarray(lon) * np.pi * EARTH_RADIUS / 180.0
    ty = scale * EARTH_RADIUS * np.log(np.tan((90.0 + np.asarray(lat)) * np.pi / 360.0))
    return tx, ty


def reduce_to_camera_view(points: np.ndarray, calib: Calib, image_shape) -> np.ndarray:
    """KITTI 'velodyne_reduced': keep only the points that project into the camera image."""
    uv, depth = calib.lidar_to_image(points)
    H, W = image_shape[:2]
    keep = (depth > 0) & (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
    return points[keep]


# ----------------------------------------------------------------------------------------------- frames
@dataclass
class Frame:
    id: str
    points: np.ndarray
    image: np.ndarray | None
    calib: Calib
    labels: list[Object3D] | None = None
    oxts: np.ndarray | None = None
    source: str = ""
    notes: list[str] = field(default_factory=list)  # what reading or detection had to assume (shown as warnings)


def resolve_split(root) -> Path:
    """A KITTI dataset root (holding training/) or the split folder itself."""
    root = Path(root)
    if not root.exists():
        raise UserError(f"{root}: folder not found")
    if (root / "training").is_dir():
        return root / "training"
    if (root / "velodyne").is_dir():
        return root
    raise UserError(f"{root}: not a KITTI folder (expected training/ or velodyne/ inside)")


def list_frames(split) -> list[str]:
    split = Path(split)
    ids = sorted(p.stem for p in (split / "velodyne").glob("*.bin"))
    if not ids:
        raise UserError(f"{split / 'velodyne'}: no .bin frames found")
    return ids


def load_frame(split: Path, frame_id: str, labels: bool = True, dims: int = 4) -> Frame:
    split = Path(split)
    vel = split / "velodyne" / f"{frame_id}.bin"
    if not vel.exists():
        raise UserError(f"{vel}: frame {frame_id} not found")
    calib_path = split / "calib" / f"{frame_id}.txt"
    img_path = split / "image_2" / f"{frame_id}.png"
    missing = [f"{p.parent.name}/{p.name}: {what} not found" for p, what in ((calib_path, "calibration"),
               (img_path, "image")) if not p.exists() and not p.is_symlink()]
    if missing:  # velodyne/ has the frame, the rest does not: say so instead of one bare 'not found'
        raise UserError(f"{split}: frame {frame_id} is incomplete ({'; '.join(missing)}; velodyne/{frame_id}.bin "
                        f"exists): an interrupted synth or copy? Complete or remove the frame")
    calib = read_calib(calib_path)
    image = read_image(img_path)
    calib.check_image(image.shape, img_path)
    points = read_velodyne(vel, dims)
    lab_path = split / "label_2" / f"{frame_id}.txt"
    objs = read_label(lab_path) if labels and lab_path.exists() else None
    ox_path = split / "oxts" / f"{frame_id}.txt"
    oxts = read_oxts(ox_path) if ox_path.exists() else None
    return Frame(frame_id, points, image, calib, objs, oxts, str(split))


def load_files(lidar, image, calib, oxts=None, dims: int = 4) -> Frame:
    c = read_calib(calib)
    img = read_image(image)
    c.check_image(img.shape, image)
    pts = read_velodyne(lidar, dims)
    ox = read_oxts(oxts) if oxts else None
    return Frame(Path(lidar).stem, pts, img, c, None, ox, str(Path(lidar).parent))
