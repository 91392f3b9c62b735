"""A synthetic SMPL-X-compatible body model, for the demo and the tests.

The real SMPL-X files cannot be redistributed, so this module builds a stand-in with the official
`.npz` layout and sizes (10,475 vertices, 55 joints on the real kinematic tree, 400 shape and
expression directions, 486 pose directions, 45-D hand PCA, 51 face landmarks) that `smplx.SMPLX`
and `zerohsi_jax.body.SMPLX` both load.

The body is a plausible 1.7 m human in SMPL-X's rest pose (T-pose, y up, facing +z, its left on +x,
soles at y = -1.2, pelvis at y = -0.25): a torso-neck-head surface of revolution with elliptic
cross-sections, capsule limbs through the joints, a palm with five three-segment fingers, feet,
eyeballs, a nose and ears. Skinning weights blend smoothly across every joint; the joint regressor
averages rings of vertices around each joint; smplx's hard-coded extra-joint vertex ids (nose, eyes,
ears, toes, heels, finger tips) are permuted onto the matching places of this mesh.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .joint_names import EXTRA_VERTEX_JOINTS, JOINT_NAMES, NUM_JOINTS, PARENTS

NUM_VERTICES = 10475
NUM_SHAPE_DIRS = 300
NUM_EXPRESSION_DIRS = 100
NUM_POSE_FEATURES = 9 * (NUM_JOINTS - 1)
SOLE_Y = -1.20

_J = {name: i for i, name in enumerate(JOINT_NAMES)}
_FINGERS = ("index", "middle", "pinky", "ring", "thumb")


# --------------------------------------------------------------------------------------------------
# Skeleton
# --------------------------------------------------------------------------------------------------

# Left-side (+x) and midline joints of the neutral body; right-side joints mirror x.
_LEFT_AND_MIDLINE = {
    "pelvis": (0.0, -0.25, 0.0),
    "left_hip": (0.085, -0.33, -0.005),
    "spine1": (0.0, -0.13, -0.02),
    "left_knee": (0.10, -0.715, 0.01),
    "spine2": (0.0, 0.0, -0.015),
    "left_ankle": (0.095, -1.13, -0.045),
    "spine3": (0.0, 0.06, -0.01),
    "left_foot": (0.11, -1.175, 0.085),
    "neck": (0.0, 0.235, -0.025),
    "left_collar": (0.075, 0.155, -0.01),
    "head": (0.0, 0.31, -0.005),
    "left_shoulder": (0.175, 0.185, -0.02),
    "left_elbow": (0.43, 0.18, -0.035),
    "left_wrist": (0.675, 0.18, -0.03),
    "jaw": (0.0, 0.32, 0.035),
    "left_eye_smplhf": (0.032, 0.395, 0.088),
}

# Finger layout of the left hand (palm down, fingers along +x, thumb forward along +z):
# knuckle offset from the wrist, direction, lengths (joint 1 -> 2, 2 -> 3, 3 -> end of the last
# phalanx, end -> tip), radius at the base.
_FINGER_LAYOUT = {
    "index": ((0.088, -0.008, 0.027), (1.0, -0.02, 0.08), (0.038, 0.023, 0.012, 0.006), 0.0090),
    "middle": ((0.092, -0.008, 0.009), (1.0, -0.02, 0.02), (0.043, 0.026, 0.014, 0.006), 0.0093),
    "ring": ((0.088, -0.008, -0.010), (1.0, -0.02, -0.05), (0.040, 0.025, 0.013, 0.006), 0.0088),
    "pinky": ((0.080, -0.009, -0.027), (1.0, -0.02, -0.12), (0.031, 0.019, 0.011, 0.005), 0.0078),
    "thumb": ((0.022, -0.014, 0.026), (0.80, -0.15, 0.58), (0.038, 0.030, 0.016, 0.006), 0.0115),
}


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _mirror(p):
    return np.array([-p[0], p[1], p[2]])


def _design_skeleton(gender: str):
    """Rest joints (55, 3) and the finger tip positions, for the given gender's proportions."""
    joints = np.zeros((NUM_JOINTS, 3))
    for name, pos in _LEFT_AND_MIDLINE.items():
        joints[_J[name]] = pos
        if name.startswith("left_"):
            joints[_J["right_" + name[5:]]] = _mirror(pos)
    tips = {}
    for finger, (offset, direction, lengths, _) in _FINGER_LAYOUT.items():
        d = _unit(direction)
        p = joints[_J["left_wrist"]] + np.asarray(offset)
        for k in range(3):
            joints[_J[f"left_{finger}{k + 1}"]] = p
            joints[_J[f"right_{finger}{k + 1}"]] = _mirror(p)
            p = p + lengths[k] * d
        tips[("left", finger)] = p + lengths[3] * d
        tips[("right", finger)] = _mirror(tips[("left", finger)])
    # Gender: overall height about the soles, and shoulder/hip breadth. The body is designed neutral
    # and mapped at the end, so every threshold below is in neutral coordinates.
    height, shoulders, hips = {
        "neutral": (1.0, 1.0, 1.0),
        "male": (1.04, 1.06, 0.97),
        "female": (0.96, 0.93, 1.06),
    }[gender]
    return joints, tips, _gender_map(height, shoulders, hips)


def _gender_map(height: float, shoulders: float, hips: float):
    """A smooth map of the neutral body to a gender's proportions (applied to joints and mesh)."""

    def apply(p):
        p = np.array(p, dtype=np.float64)
        y = p[..., 1]
        # Breadth factor: hips below the waist, shoulders above the chest, blended in between.
        t = np.clip((y + 0.10) / 0.25, 0.0, 1.0)
        t = t * t * (3 - 2 * t)
        breadth = hips * (1 - t) + shoulders * t
        out = p.copy()
        out[..., 0] = p[..., 0] * breadth
        out[..., 1] = SOLE_Y + (y - SOLE_Y) * height
        out[..., 2] = p[..., 2] * (0.5 + 0.5 * height)
        return out

    return apply


# --------------------------------------------------------------------------------------------------
# Mesh building blocks
# --------------------------------------------------------------------------------------------------


class _Part:
    """One closed tube: rings of `n_seg` vertices swept along a centerline, closed by two poles."""

    def __init__(
        self,
        centers,
        frame_u,
        radii_u,
        radii_v,
        n_seg,
        exponent=2.0,
        pole_start=None,
        pole_end=None,
        arc=None,
    ):
        centers = np.asarray(centers, dtype=np.float64)
        rings = len(centers)
        tangent = _unit(np.gradient(centers, axis=0))
        u = np.broadcast_to(np.asarray(frame_u, dtype=np.float64), centers.shape)
        u = _unit(u - np.sum(u * tangent, axis=-1, keepdims=True) * tangent)
        v = np.cross(tangent, u)
        phi = 2 * np.pi * np.arange(n_seg) / n_seg
        c, s = np.cos(phi), np.sin(phi)
        ce = np.sign(c) * np.abs(c) ** (2.0 / exponent)
        se = np.sign(s) * np.abs(s) ** (2.0 / exponent)
        ring_pts = (
            centers[:, None, :]
            + np.asarray(radii_u)[:, None, None] * ce[None, :, None] * u[:, None, :]
            + np.asarray(radii_v)[:, None, None] * se[None, :, None] * v[:, None, :]
        )
        verts = [ring_pts.reshape(-1, 3)]
        faces = []
        j = np.arange(n_seg)
        jn = (j + 1) % n_seg
        for r in range(rings - 1):
            a, b = r * n_seg + j, r * n_seg + jn
            cc, d = (r + 1) * n_seg + jn, (r + 1) * n_seg + j
            faces.append(np.stack([a, b, cc], -1))
            faces.append(np.stack([a, cc, d], -1))
        n = rings * n_seg
        if pole_start is None:
            pole_start = centers[0] - tangent[0] * 0.5 * min(radii_u[0], radii_v[0])
        if pole_end is None:
            pole_end = centers[-1] + tangent[-1] * 0.5 * min(radii_u[-1], radii_v[-1])
        verts.append(np.asarray(pole_start)[None])
        verts.append(np.asarray(pole_end)[None])
        faces.append(np.stack([np.full(n_seg, n), jn, j], -1))
        last = (rings - 1) * n_seg
        faces.append(np.stack([np.full(n_seg, n + 1), last + j, last + jn], -1))
        self.verts = np.concatenate(verts)
        self.faces = np.concatenate(faces).astype(np.int64)
        self.n_seg = n_seg
        self.rings = rings
        arc = np.zeros(rings) if arc is None else np.asarray(arc, dtype=np.float64)
        # Axial coordinate of every vertex (poles just beyond the end rings), for chain skinning.
        self.axial = np.concatenate([np.repeat(arc, n_seg), [arc[0] - 1e-3, arc[-1] + 1e-3]])
        if _signed_volume(self.verts, self.faces) < 0:
            self.faces = self.faces[:, ::-1].copy()
        self.weights = None  # (N, 55)
        self.regress = {}  # joint -> local vertex ids whose weighted mean is that joint

    def ring(self, r):
        return np.arange(r * self.n_seg, (r + 1) * self.n_seg)

    def nearest_ring(self, axial_value):
        return int(np.argmin(np.abs(self.axial[: self.rings * self.n_seg : self.n_seg] - axial_value)))

    def rings_around(self, axial_value):
        """Vertices of the three rings nearest to an axial position: a non-planar set whose weighted
        mean can reach any point near the axis there."""
        r = min(max(self.nearest_ring(axial_value), 1), self.rings - 2)
        return np.arange((r - 1) * self.n_seg, (r + 2) * self.n_seg)


def _signed_volume(verts, faces):
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    return float(np.sum(np.einsum("ij,ij->i", a, np.cross(b, c))) / 6.0)


def _polyline_samples(points, n, start_ext=0.0, end_ext=0.0):
    """n points evenly spaced in arc length along a polyline extended at both ends; their arc lengths
    (0 at the first control point) and the arc lengths of the control points."""
    points = np.asarray(points, dtype=np.float64)
    seg = np.linalg.norm(np.diff(points, axis=0), axis=-1)
    knots = np.concatenate([[0.0], np.cumsum(seg)])
    s = np.linspace(-start_ext, knots[-1] + end_ext, n)
    out = np.empty((n, 3))
    for k in range(3):
        # Linear extrapolation beyond the ends follows the first / last segment.
        out[:, k] = np.interp(s, knots, points[:, k])
        lo, hi = s < 0, s > knots[-1]
        out[lo, k] = points[0, k] + s[lo] * (points[1, k] - points[0, k]) / seg[0]
        out[hi, k] = points[-1, k] + (s[hi] - knots[-1]) * (points[-1, k] - points[-2, k]) / seg[-1]
    return out, s, knots


def _smooth(values, passes=3):
    v = np.asarray(values, dtype=np.float64).copy()
    for _ in range(passes):
        v[1:-1] = 0.25 * v[:-2] + 0.5 * v[1:-1] + 0.25 * v[2:]
    return v


def _round_caps(centers, arc, ru, rv, n_cap, depth_start, depth_end):
    """Prepend/append rings that shrink like a half-ellipsoid, for rounded tube ends."""
    t0 = _unit(centers[1] - centers[0])
    t1 = _unit(centers[-1] - centers[-2])
    ang = np.linspace(0, np.pi / 2, n_cap + 2)[1:-1]
    pre_c = [centers[0] - t0 * depth_start * np.sin(a) for a in ang[::-1]]
    post_c = [centers[-1] + t1 * depth_end * np.sin(a) for a in ang]
    pre_f = np.cos(ang[::-1])
    post_f = np.cos(ang)
    centers = np.concatenate([np.array(pre_c).reshape(-1, 3), centers, np.array(post_c).reshape(-1, 3)])
    arc = np.concatenate([arc[0] - depth_start * np.sin(ang[::-1]), arc, arc[-1] + depth_end * np.sin(ang)])
    ru = np.concatenate([ru[0] * pre_f, ru, ru[-1] * post_f])
    rv = np.concatenate([rv[0] * pre_f, rv, rv[-1] * post_f])
    return centers, arc, ru, rv, centers[0] - t0 * depth_start, centers[-1] + t1 * depth_end


def _smoothstep(x):
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


def _chain_weights(axial, joints, boundaries, half_widths):
    """Partition of unity along a chain: joints[i] owns the axial interval between boundaries i-1 and i,
    with smooth transitions of the given half-widths centred on each boundary."""
    n = len(axial)
    steps = [_smoothstep((axial - b) / (2 * h) + 0.5) for b, h in zip(boundaries, half_widths, strict=True)]
    w = np.zeros((n, NUM_JOINTS))
    prev = np.ones(n)
    for i, joint in enumerate(joints):
        nxt = steps[i] if i < len(steps) else np.zeros(n)
        w[:, joint] += np.clip(prev - nxt, 0.0, None)
        prev = nxt
    return w / w.sum(axis=1, keepdims=True)


def _blend_towards(w, joint, amount):
    """Move a fraction `amount` (per vertex) of every vertex's weight onto `joint`."""
    amount = np.clip(amount, 0.0, 1.0)[:, None]
    target = np.zeros_like(w)
    target[:, joint] = 1.0
    return (1 - amount) * w + amount * target


# --------------------------------------------------------------------------------------------------
# Body parts
# --------------------------------------------------------------------------------------------------

# Torso-neck-head profile: height y -> half-width, half-depth, depth centre, cross-section exponent.
_CORE_PROFILE = np.array(
    [
        # y      rx     rz     cz     exponent
        [-0.410, 0.060, 0.055, 0.000, 2.0],
        [-0.390, 0.125, 0.085, 0.000, 2.4],
        [-0.340, 0.160, 0.100, -0.005, 2.6],
        [-0.250, 0.170, 0.105, -0.005, 2.6],
        [-0.150, 0.150, 0.095, 0.000, 2.6],
        [-0.050, 0.140, 0.095, 0.005, 2.6],
        [0.050, 0.155, 0.100, 0.005, 2.6],
        [0.120, 0.170, 0.100, 0.000, 2.8],
        [0.170, 0.180, 0.090, -0.010, 2.8],
        [0.200, 0.160, 0.078, -0.015, 2.6],
        [0.220, 0.100, 0.065, -0.020, 2.2],
        [0.240, 0.060, 0.055, -0.018, 2.0],
        [0.270, 0.055, 0.055, -0.012, 2.0],
        [0.290, 0.062, 0.072, 0.002, 2.0],
        [0.315, 0.070, 0.090, 0.010, 2.0],
        [0.350, 0.077, 0.100, 0.010, 2.1],
        [0.400, 0.079, 0.101, 0.008, 2.2],
    ]
    # The crown: a half-ellipsoid from y = 0.43 up to the top of the head.
    + [
        [0.43 + 0.072 * np.sin(t), 0.077 * np.cos(t), 0.098 * np.cos(t), 0.004 - 0.012 * np.sin(t), 2.1]
        for t in np.linspace(0.0, 1.45, 8)
    ]
)
_CORE_TOP = 0.503
_CORE_BOTTOM = -0.418


def _core_part(n_rings: int, n_seg: int):
    # Rings evenly spaced along the profile curve (not in y), so the crown and the crotch, where the
    # surface turns horizontal, get as many rings as the walls.
    dense_y = np.linspace(_CORE_PROFILE[0, 0], _CORE_PROFILE[-1, 0], 2000)
    dense_r = np.interp(dense_y, _CORE_PROFILE[:, 0], _CORE_PROFILE[:, 1:3].max(axis=1))
    # ... and twice as dense on the neck and head, whose features (chin, mouth, nose) are small.
    density = 1.0 + 1.2 * _smoothstep((dense_y[1:] - 0.20) / 0.06)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(dense_y), np.diff(dense_r)) * density)])
    y = np.interp(np.linspace(0.0, arc[-1], n_rings), arc, dense_y)
    cols = [_smooth(np.interp(y, _CORE_PROFILE[:, 0], _CORE_PROFILE[:, k]), passes=2) for k in range(1, 5)]
    rx, rz, cz, ex = cols
    # One exponent per part keeps the ring sampling simple: squarer torso than head comes from rx/rz.
    centers = np.stack([np.zeros_like(y), y, cz], -1)
    # Sweep with a per-ring exponent: build with exponent 2 then reshape each ring radially.
    part = _Part(
        centers,
        (1.0, 0.0, 0.0),
        rx,
        rz,
        n_seg,
        2.0,
        pole_start=(0, _CORE_BOTTOM, 0.0),
        pole_end=(0, _CORE_TOP, -0.01),
        arc=y,
    )
    phi = 2 * np.pi * np.arange(n_seg) / n_seg
    c, s = np.cos(phi), np.sin(phi)
    for r in range(n_rings):
        p = ex[r]
        ce = np.sign(c) * np.abs(c) ** (2.0 / p)
        se = np.sign(s) * np.abs(s) ** (2.0 / p)
        idx = part.ring(r)
        part.verts[idx, 0] = rx[r] * ce
        # The sweep frame's v axis is -z (tangent +y cross u +x); keep that orientation.
        part.verts[idx, 2] = cz[r] - rz[r] * se
    part.verts = _face_features(part.verts)
    return part


def _face_features(v):
    """Nose, eye sockets, ears and a chin on the head of the neutral core (before gender scaling)."""
    v = v.copy()
    x, y, z = v[:, 0], v[:, 1], v[:, 2]
    front = np.clip(z / 0.05, 0.0, 1.0)
    nose = 0.028 * np.exp(-((x / 0.012) ** 2) - ((y - 0.372) / 0.022) ** 2) * front
    bridge = 0.010 * np.exp(-((x / 0.010) ** 2) - ((y - 0.395) / 0.012) ** 2) * front
    sockets = -0.008 * sum(
        np.exp(-(((x - sx) / 0.016) ** 2) - ((y - 0.395) / 0.012) ** 2) for sx in (-0.032, 0.032)
    )
    lips = 0.004 * np.exp(-((x / 0.022) ** 2) - ((y - 0.337) / 0.008) ** 2) * front
    chin = 0.010 * np.exp(-((x / 0.025) ** 2) - ((y - 0.300) / 0.015) ** 2) * front
    v[:, 2] += nose + bridge + sockets * front + lips + chin
    side = np.clip((np.abs(x) - 0.05) / 0.02, 0.0, 1.0)
    ears = 0.014 * np.exp(-(((y - 0.385) / 0.022) ** 2) - ((z - 0.0) / 0.018) ** 2) * side
    v[:, 0] += np.sign(x) * ears
    return v


def _limb(
    points,
    n_rings,
    n_seg,
    frame_u,
    radius_u_fn,
    radius_v_fn,
    start_ext,
    end_ext,
    n_cap=3,
    cap_depth=(1.0, 1.0),
    exponent=2.0,
):
    centers, arc, knots = _polyline_samples(points, n_rings, start_ext, end_ext)
    ru, rv = radius_u_fn(arc, knots), radius_v_fn(arc, knots)
    centers, arc, ru, rv, p0, p1 = _round_caps(
        centers, arc, ru, rv, n_cap, cap_depth[0] * min(ru[0], rv[0]), cap_depth[1] * min(ru[-1], rv[-1])
    )
    part = _Part(centers, frame_u, ru, rv, n_seg, exponent, pole_start=p0, pole_end=p1, arc=arc)
    part.knots = knots
    return part


def _profile(knot_radii):
    """Radius as a piecewise-linear function of arc length, given (knot index or arc, radius) pairs."""

    def fn(arc, knots):
        xs = [knots[k] + off if isinstance(k, int) else k for k, off, _ in knot_radii]
        rs = [r for _, _, r in knot_radii]
        return _smooth(np.interp(arc, xs, rs), passes=2)

    return fn


def _leg_part(side, joints, n_rings, n_seg):
    hip, knee, ankle = (joints[_J[f"{side}_{n}"]] for n in ("hip", "knee", "ankle"))
    top = hip + np.array([0.0, 0.075, 0.0])
    pts = [top, hip, knee, ankle]
    ru = _profile(
        [
            (0, 0.0, 0.075),
            (1, 0.0, 0.088),
            (1, 0.12, 0.075),
            (2, -0.06, 0.058),
            (2, 0.0, 0.053),
            (2, 0.10, 0.058),
            (3, -0.14, 0.040),
            (3, 0.0, 0.036),
            (3, 0.03, 0.036),
        ]
    )
    rv = _profile(
        [
            (0, 0.0, 0.080),
            (1, 0.0, 0.092),
            (1, 0.12, 0.078),
            (2, -0.06, 0.060),
            (2, 0.0, 0.055),
            (2, 0.10, 0.060),
            (3, -0.14, 0.040),
            (3, 0.0, 0.038),
            (3, 0.03, 0.038),
        ]
    )
    part = _limb(pts, n_rings, n_seg, (1.0, 0.0, 0.0), ru, rv, 0.0, 0.03, n_cap=3, cap_depth=(0.5, 0.6))
    k = part.knots
    sided = {"left": 1, "right": 2}[side]
    hip_j, knee_j, ankle_j = sided, sided + 3, sided + 6
    part.weights = _chain_weights(
        part.axial, [0, hip_j, knee_j, ankle_j], [k[1] - 0.01, k[2], k[3]], [0.09, 0.06, 0.05]
    )
    part.regress = {
        hip_j: part.rings_around(k[1]),
        knee_j: part.rings_around(k[2]),
        ankle_j: part.rings_around(k[3]),
    }
    return part


def _arm_part(side, joints, n_rings, n_seg):
    sgn = 1.0 if side == "left" else -1.0
    shoulder, elbow, wrist = (joints[_J[f"{side}_{n}"]] for n in ("shoulder", "elbow", "wrist"))
    start = shoulder + np.array([-0.075 * sgn, -0.005, 0.0])
    pts = [start, shoulder, elbow, wrist]
    # u is forward (+z): forearms are wider front-to-back than top-to-bottom near the wrist.
    ru = _profile(
        [
            (0, 0.0, 0.060),
            (1, 0.0, 0.055),
            (1, 0.08, 0.046),
            (2, -0.03, 0.038),
            (2, 0.0, 0.037),
            (2, 0.06, 0.040),
            (3, -0.03, 0.031),
            (3, 0.0, 0.030),
        ]
    )
    rv = _profile(
        [
            (0, 0.0, 0.062),
            (1, 0.0, 0.056),
            (1, 0.08, 0.046),
            (2, -0.03, 0.037),
            (2, 0.0, 0.035),
            (2, 0.06, 0.036),
            (3, -0.03, 0.022),
            (3, 0.0, 0.021),
        ]
    )
    part = _limb(pts, n_rings, n_seg, (0.0, 0.0, 1.0), ru, rv, 0.0, 0.012, n_cap=2, cap_depth=(0.5, 0.3))
    k = part.knots
    base = {"left": 0, "right": 1}[side]
    collar, sh, el, wr = 13 + base, 16 + base, 18 + base, 20 + base
    part.weights = _chain_weights(
        part.axial, [collar, sh, el, wr], [k[1] - 0.01, k[2], k[3]], [0.06, 0.05, 0.035]
    )
    part.regress = {sh: part.rings_around(k[1]), el: part.rings_around(k[2]), wr: part.rings_around(k[3])}
    return part


def _palm_part(side, joints, n_rings, n_seg):
    sgn = 1.0 if side == "left" else -1.0
    wrist = joints[_J[f"{side}_wrist"]]
    knuckle_x = np.mean([joints[_J[f"{side}_{f}1"]][0] for f in ("index", "middle", "ring", "pinky")])
    pts = [
        wrist + np.array([-0.012 * sgn, -0.004, 0.0]),
        np.array([knuckle_x + 0.004 * sgn, wrist[1] - 0.008, wrist[2]]),
    ]
    ru = _profile([(0, 0.0, 0.030), (0, 0.03, 0.040), (1, 0.0, 0.043)])  # half-width (forward, z)
    rv = _profile([(0, 0.0, 0.018), (0, 0.03, 0.016), (1, 0.0, 0.012)])  # half-thickness (y)
    part = _limb(
        pts, n_rings, n_seg, (0.0, 0.0, 1.0), ru, rv, 0.0, 0.0, n_cap=2, cap_depth=(0.3, 0.5), exponent=3.0
    )
    base = {"left": 0, "right": 1}[side]
    wr = 20 + base
    w = np.zeros((len(part.verts), NUM_JOINTS))
    w[:, wr] = 1.0
    # Near the knuckles, hand over to the finger whose base is closest across the palm.
    along = part.axial / part.knots[-1]
    finger_bases = {f: joints[_J[f"{side}_{f}1"]] for f in ("index", "middle", "ring", "pinky")}
    near_knuckles = _smoothstep((along - 0.78) / 0.25)
    logits = np.stack([-(((part.verts[:, 2] - p[2]) / 0.008) ** 2) for p in finger_bases.values()], -1)
    soft = np.exp(logits - logits.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    for i, f in enumerate(finger_bases):
        w[:, _J[f"{side}_{f}1"]] += 0.6 * near_knuckles * soft[:, i]
    thumb_base = joints[_J[f"{side}_thumb1"]]
    near_thumb = 0.7 * np.exp(-np.sum((part.verts - thumb_base) ** 2, -1) / 0.018**2)
    w[:, _J[f"{side}_thumb1"]] += near_thumb
    w[:, wr] = np.clip(1.0 - w.sum(1) + w[:, wr], 0.0, None)
    part.weights = w / w.sum(1, keepdims=True)
    part.regress = {}
    return part


def _finger_part(side, finger, joints, tips, n_rings, n_seg):
    names = [f"{side}_{finger}{k}" for k in (1, 2, 3)]
    p1, p2, p3 = (joints[_J[n]] for n in names)
    tip = tips[(side, finger)]
    base_r = _FINGER_LAYOUT[finger][3]
    back = 0.016 if finger == "thumb" else 0.012
    pts = [p1, p2, p3, tip]
    ru = _profile(
        [
            (0, -back, base_r * 1.05),
            (0, 0.0, base_r),
            (1, 0.0, base_r * 0.9),
            (2, 0.0, base_r * 0.82),
            (3, 0.0, base_r * 0.74),
        ]
    )
    rv = _profile(
        [
            (0, -back, base_r * 0.95),
            (0, 0.0, base_r * 0.92),
            (1, 0.0, base_r * 0.82),
            (2, 0.0, base_r * 0.74),
            (3, 0.0, base_r * 0.66),
        ]
    )
    frame = (0.0, 1.0, 0.0) if finger == "thumb" else (0.0, 0.0, 1.0)
    part = _limb(pts, n_rings, n_seg, frame, ru, rv, back, 0.0, n_cap=3, cap_depth=(0.6, 1.0))
    k = part.knots
    wrist = _J[f"{side}_wrist"]
    j1, j2, j3 = (_J[n] for n in names)
    part.weights = _chain_weights(
        part.axial, [wrist, j1, j2, j3], [k[0] - 0.002, k[1], k[2]], [0.014, 0.012, 0.010]
    )
    part.regress = {j1: part.rings_around(k[0]), j2: part.rings_around(k[1]), j3: part.rings_around(k[2])}
    return part


def _foot_part(side, joints, n_rings, n_seg):
    sgn = 1.0 if side == "left" else -1.0
    ankle, ball = joints[_J[f"{side}_ankle"]], joints[_J[f"{side}_foot"]]
    sole = SOLE_Y
    # Centreline from heel to toe tip: (x, y-centre, z) with half-height so the sole is flat.
    heel_z, toe_z = ankle[2] - 0.055, ball[2] + 0.09
    zs = np.array([heel_z, ankle[2], 0.5 * (ankle[2] + ball[2]), ball[2], toe_z])
    half_h = np.array([0.040, 0.050, 0.038, 0.024, 0.016])
    half_w = np.array([0.033, 0.040, 0.046, 0.050, 0.040])
    xs = sgn * np.array(
        [
            abs(ankle[0]) - 0.005,
            abs(ankle[0]),
            0.5 * (abs(ankle[0]) + abs(ball[0])),
            abs(ball[0]),
            abs(ball[0]) + 0.006,
        ]
    )
    z = np.linspace(heel_z, toe_z, n_rings)
    hh = _smooth(np.interp(z, zs, half_h), 2)
    hw = _smooth(np.interp(z, zs, half_w), 2)
    centers = np.stack([np.interp(z, zs, xs), sole + hh, z], -1)
    centers, arc, ru, rv, p0, p1 = _round_caps(centers, z, hw, hh, 3, 0.5 * hh[0], 0.9 * hh[-1])
    part = _Part(centers, (1.0, 0.0, 0.0), ru, rv, n_seg, 2.6, pole_start=p0, pole_end=p1, arc=arc)
    ankle_j, foot_j = _J[f"{side}_ankle"], _J[f"{side}_foot"]
    part.weights = _chain_weights(part.axial, [ankle_j, foot_j], [ball[2]], [0.035])
    part.regress = {foot_j: part.rings_around(ball[2])}
    return part


def _eye_part(side, joints, n_rings, n_seg):
    center = joints[_J[f"{side}_eye_smplhf"]]
    radius = 0.012
    theta = np.linspace(0, np.pi, n_rings + 2)[1:-1]
    centers = center[None] + np.stack([0 * theta, 0 * theta, -radius * np.cos(theta)], -1)
    r = radius * np.sin(theta)
    part = _Part(
        centers,
        (1.0, 0.0, 0.0),
        r,
        r,
        n_seg,
        2.0,
        pole_start=center - [0, 0, radius],
        pole_end=center + [0, 0, radius],
        arc=theta,
    )
    part.weights = np.zeros((len(part.verts), NUM_JOINTS))
    part.weights[:, _J[f"{side}_eye_smplhf"]] = 1.0
    part.regress = {_J[f"{side}_eye_smplhf"]: np.arange(len(part.verts))}
    return part


def _core_weights(part, joints):
    v = part.verts
    y = v[:, 1]
    ys = [joints[_J[n]][1] for n in ("spine1", "spine2", "spine3", "neck", "head")]
    w = _chain_weights(y, [0, 3, 6, 9, 12, 15], ys, [0.07, 0.07, 0.07, 0.04, 0.04])
    ax = np.abs(v[:, 0])
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        on_side = (np.sign(v[:, 0]) == sgn) | (ax < 1e-9)
        shoulder = joints[_J[f"{side}_shoulder"]]
        # Upper chest / top of the shoulder follows the collar; its outer end follows the shoulder.
        collar_amt = (
            _smoothstep((ax - 0.04) / 0.07)
            * _smoothstep((y - 0.04) / 0.09)
            * (1 - _smoothstep((y - 0.215) / 0.03))
            * on_side
        )
        w = _blend_towards(w, _J[f"{side}_collar"], 0.85 * collar_amt)
        sh_amt = (
            _smoothstep((ax - (abs(shoulder[0]) - 0.04)) / 0.04) * _smoothstep((y - 0.08) / 0.06) * on_side
        )
        w = _blend_towards(w, _J[f"{side}_shoulder"], 0.6 * sh_amt)
        # The crotch and buttocks follow the thighs.
        hip = joints[_J[f"{side}_hip"]]
        hip_amt = _smoothstep((ax - 0.02) / 0.08) * _smoothstep((hip[1] + 0.03 - y) / 0.09) * on_side
        w = _blend_towards(w, _J[f"{side}_hip"], 0.6 * hip_amt)
    # Lower face in front of the ears opens with the jaw.
    jaw_amt = (
        (1 - _smoothstep((y - 0.312) / 0.045)) * _smoothstep((y - 0.255) / 0.05) * _smoothstep(v[:, 2] / 0.08)
    )
    w = _blend_towards(w, _J["jaw"], 0.9 * jaw_amt)
    return w


# --------------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------------

_LIMB_RES = {
    "leg": (36, 24),
    "arm": (30, 20),
    "palm": (10, 20),
    "finger": (10, 8),
    "thumb": (11, 8),
    "foot": (18, 18),
    "eye": (7, 12),
}
_CORE_SEG = 56


def _build_parts(gender: str):
    joints, tips, scale_fn = _design_skeleton(gender)
    parts = []
    for side in ("left", "right"):
        parts.append(_leg_part(side, joints, *_LIMB_RES["leg"]))
        parts.append(_arm_part(side, joints, *_LIMB_RES["arm"]))
        parts.append(_palm_part(side, joints, *_LIMB_RES["palm"]))
        for finger in _FINGERS:
            res = _LIMB_RES["thumb" if finger == "thumb" else "finger"]
            parts.append(_finger_part(side, finger, joints, tips, *res))
        parts.append(_foot_part(side, joints, *_LIMB_RES["foot"]))
        parts.append(_eye_part(side, joints, *_LIMB_RES["eye"]))
    used = sum(len(p.verts) for p in parts)
    budget = NUM_VERTICES - used - 2
    n_rings = budget // _CORE_SEG
    core = _core_part(n_rings, _CORE_SEG)
    core.weights = _core_weights(core, joints)
    _split_edges(core, budget - n_rings * _CORE_SEG)
    core.regress = {j: core.rings_around(joints[j][1]) for j in (0, 3, 6, 9, 12, 15, 13, 14)}
    core.regress[_J["jaw"]] = np.nonzero(np.abs(core.verts[:, 1] - joints[_J["jaw"]][1]) < 0.012)[0]
    parts.insert(0, core)
    return parts, joints, tips, scale_fn


def _split_edges(part, count):
    """Insert `count` vertices at midpoints of longitudinal edges on the back of the torso (each split
    turns two triangles into four), so the mesh has exactly the SMPL-X vertex count."""
    if count <= 0:
        return
    n = part.n_seg
    j0 = n // 4  # angle pi/2 of the sweep: the back (-z) of the torso
    picks = []
    row = part.rings // 2 - 6
    while len(picks) < count:
        for k in range(0, 16, 2):
            if len(picks) == count:
                break
            picks.append((row, (j0 + k - 8) % n))
        row += 2
    verts = list(part.verts)
    faces = part.faces.tolist()
    axial = list(part.axial)
    weights = list(part.weights)
    face_of_edge = {}
    for fi, f in enumerate(faces):
        for a, b in ((f[0], f[1]), (f[1], f[2]), (f[2], f[0])):
            face_of_edge[(a, b)] = fi
    for r, j in picks:
        a, b = r * n + j, (r + 1) * n + j
        m = len(verts)
        verts.append(0.5 * (part.verts[a] + part.verts[b]))
        axial.append(0.5 * (part.axial[a] + part.axial[b]))
        weights.append(0.5 * (part.weights[a] + part.weights[b]))
        for e in ((a, b), (b, a)):
            fi = face_of_edge[e]
            f = faces[fi]
            k = f.index(e[0])
            c = f[(k + 2) % 3]
            faces[fi] = [e[0], m, c]
            faces.append([m, e[1], c])
    part.verts = np.array(verts)
    part.faces = np.array(faces, dtype=np.int64)
    part.axial = np.array(axial)
    part.weights = np.array(weights)


def _vertex_normals(verts, faces):
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    normals = np.zeros_like(verts)
    for k in range(3):
        np.add.at(normals, faces[:, k], fn)
    return normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)


def _regressor_row(points, ids, target):
    """Weights over `points[ids]` closest to uniform that sum to 1 and average to `target`."""
    p = points[ids]
    k = len(ids)
    a = np.concatenate([p.T, np.ones((1, k))], 0)  # (4, k)
    u = np.full(k, 1.0 / k)
    b = np.concatenate([target, [1.0]])
    return u + np.linalg.pinv(a) @ (b - a @ u)


def _landmark_layout():
    """51 (x, y) face positions of the neutral head, in LANDMARK_NAMES order."""
    pts = []
    pts += [(-0.055, 0.407), (-0.046, 0.413), (-0.036, 0.415), (-0.025, 0.414), (-0.013, 0.411)]
    pts += [(0.013, 0.411), (0.025, 0.414), (0.036, 0.415), (0.046, 0.413), (0.055, 0.407)]
    pts += [(0.0, 0.395), (0.0, 0.386), (0.0, 0.377), (0.0, 0.368)]
    pts += [(-0.014, 0.357), (-0.007, 0.355), (0.0, 0.354), (0.007, 0.355), (0.014, 0.357)]
    eye = [(-0.012, 0.0), (-0.005, 0.004), (0.005, 0.004), (0.012, 0.0), (0.005, -0.004), (-0.005, -0.004)]
    pts += [(-0.032 + dx, 0.395 + dy) for dx, dy in eye]
    pts += [(0.032 + dx, 0.395 + dy) for dx, dy in eye]
    pts += [
        (-0.025, 0.337),
        (-0.015, 0.342),
        (-0.006, 0.344),
        (0.0, 0.343),
        (0.006, 0.344),
        (0.015, 0.342),
        (0.025, 0.337),
        (0.015, 0.330),
        (0.006, 0.327),
        (0.0, 0.326),
        (-0.006, 0.327),
        (-0.015, 0.330),
    ]
    pts += [
        (-0.020, 0.337),
        (-0.008, 0.339),
        (0.0, 0.339),
        (0.008, 0.339),
        (0.020, 0.337),
        (0.008, 0.334),
        (0.0, 0.334),
        (-0.008, 0.334),
    ]
    return np.array(pts)


def _project_to_front(verts, faces, candidate_faces, xy):
    """For each (x, y), the front-facing candidate face under it and barycentric coordinates there."""
    tri = verts[faces[candidate_faces]]  # (C, 3, 3)
    out_f, out_b = [], []
    for q in xy:
        a, b, c = tri[:, 0, :2], tri[:, 1, :2], tri[:, 2, :2]
        v0, v1, v2 = b - a, c - a, q[None] - a
        den = v0[:, 0] * v1[:, 1] - v1[:, 0] * v0[:, 1]
        den = np.where(np.abs(den) < 1e-15, 1e-15, den)
        l1 = (v2[:, 0] * v1[:, 1] - v1[:, 0] * v2[:, 1]) / den
        l2 = (v0[:, 0] * v2[:, 1] - v2[:, 0] * v0[:, 1]) / den
        l0 = 1 - l1 - l2
        bary = np.stack([l0, l1, l2], -1)
        outside = np.maximum(-bary, 0).sum(-1)
        depth = (bary * tri[:, :, 2]).sum(-1)
        # Inside the triangle first, then frontmost (largest z) among those.
        score = outside * 1e3 - depth
        best = int(np.argmin(score))
        bb = np.clip(bary[best], 0, None)
        out_f.append(candidate_faces[best])
        out_b.append(bb / bb.sum())
    return np.array(out_f), np.array(out_b)


def _hand_pca(rng):
    """45x45 orthonormal hand components (rows) and a relaxed mean pose, for the left hand; the right
    hand mirrors them (axis-angle (x, y, z) -> (x, -y, -z))."""
    flex = np.zeros((15, 3))
    flex[:12] = (0.0, 0.0, -1.0)  # fingers along +x, palm down: curling rotates about -z
    flex[12:] = _unit((0.45, 0.35, -0.8))  # thumb curls across the palm
    spread = np.zeros((15, 3))
    spread[[0, 3, 6, 9], 1] = [0.8, 0.2, -1.0, -0.5]  # index, middle, pinky, ring abduct about y
    oppose = np.zeros((15, 3))
    oppose[12:] = (0.6, 0.0, -0.3)
    basis = np.stack([flex.ravel(), spread.ravel(), oppose.ravel()])
    rest = rng.normal(size=(42, 45))
    q, _ = np.linalg.qr(np.concatenate([basis, rest]).T)
    comps = q.T.copy()
    comps[:3] *= np.sign(np.sum(comps[:3] * basis, axis=1))[:, None]  # QR fixes directions up to sign
    mean = (0.15 * flex + 0.05 * rng.normal(size=(15, 3))).ravel()
    return comps, mean


def _mirror_hand(arr):
    a = np.asarray(arr).reshape(*np.shape(arr)[:-1], 15, 3).copy()
    a[..., 1:] *= -1
    return a.reshape(np.shape(arr))


def build_synthetic_smplx(gender: str = "neutral", seed: int = 0, num_betas: int = NUM_SHAPE_DIRS) -> dict:
    """The arrays of a synthetic SMPL-X model file (see the module docstring)."""
    gender = gender.lower()
    if gender not in ("neutral", "male", "female"):
        raise ValueError(f"gender must be neutral, male or female, got {gender!r}")
    if num_betas not in (10, NUM_SHAPE_DIRS):
        raise ValueError(
            "num_betas must be 300 (the SMPL-X v1.1 layout: 300 shape + 100 expression "
            f"directions) or 10 (the v1.0 layout: 10 + 10), got {num_betas}"
        )
    rng = np.random.default_rng(seed)
    parts, joints, tips, to_gender = _build_parts(gender)
    offsets = np.cumsum([0] + [len(p.verts) for p in parts])
    verts = np.concatenate([p.verts for p in parts])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets[:-1], strict=True)])
    weights = np.concatenate([p.weights for p in parts])
    assert len(verts) == NUM_VERTICES, len(verts)

    # Everything is designed on the neutral body; the gender map moves vertices and joints at the end
    # and the regressor reproduces the mapped joints exactly.
    gendered_verts, gendered_joints = to_gender(verts), to_gender(joints)
    regressor = np.zeros((NUM_JOINTS, NUM_VERTICES))
    for p, o in zip(parts, offsets[:-1], strict=True):
        for j, ids in p.regress.items():
            regressor[j] = 0.0
            regressor[j, ids + o] = _regressor_row(gendered_verts, ids + o, gendered_joints[j])
    missing = [JOINT_NAMES[j] for j in range(NUM_JOINTS) if not regressor[j].any()]
    assert not missing, missing

    # Special vertices smplx reads by id: choose them on this mesh, then permute them into place.
    core_n = len(parts[0].verts)
    part_index = {}
    k = 1
    for side in ("left", "right"):
        for name in ("leg", "arm", "palm", *_FINGERS, "foot", "eye"):
            part_index[(side, name)] = k
            k += 1

    def part_ids(side, name):
        i = part_index[(side, name)]
        return np.arange(offsets[i], offsets[i + 1])

    head = np.arange(core_n)[verts[:core_n, 1] > 0.3]
    special = {}
    special["nose"] = head[np.argmax(verts[head, 2] - 5 * np.abs(verts[head, 0]))]
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        eye = part_ids(side, "eye")
        special[f"{side[0]}eye"] = eye[np.argmax(verts[eye, 2])]
        ear_band = head[np.abs(verts[head, 1] - 0.385) < 0.01]
        special[f"{side[0]}ear"] = ear_band[np.argmax(sgn * verts[ear_band, 0])]
        for finger in _FINGERS:
            ids = part_ids(side, finger)
            d = tips[(side, finger)] - joints[_J[f"{side}_{finger}3"]]
            special[f"{side[0]}{finger}"] = ids[np.argmax(verts[ids] @ _unit(d))]
        foot = part_ids(side, "foot")
        fv = verts[foot]
        low = fv[:, 1] < SOLE_Y + 0.012
        toe_score = fv[:, 2] - 0.5 * sgn * fv[:, 0]  # forward and towards the midline
        special[f"{side[0].upper()}BigToe"] = foot[np.argmax(np.where(low, toe_score, -np.inf))]
        small_score = fv[:, 2] + 0.8 * sgn * fv[:, 0]
        special[f"{side[0].upper()}SmallToe"] = foot[np.argmax(np.where(low, small_score, -np.inf))]
        special[f"{side[0].upper()}Heel"] = foot[np.argmax(np.where(low, -fv[:, 2], -np.inf))]
    smplx_keys = {
        "nose": "nose",
        "right_eye": "reye",
        "left_eye": "leye",
        "right_ear": "rear",
        "left_ear": "lear",
        "left_big_toe": "LBigToe",
        "left_small_toe": "LSmallToe",
        "left_heel": "LHeel",
        "right_big_toe": "RBigToe",
        "right_small_toe": "RSmallToe",
        "right_heel": "RHeel",
    }
    targets = {}
    for name, vid in EXTRA_VERTEX_JOINTS:
        key = smplx_keys.get(name) or f"{name[0]}{name.split('_')[1]}"
        targets[vid] = special[key]
    perm = np.full(NUM_VERTICES, -1)
    for vid, old in targets.items():
        perm[vid] = old
    rest_old = np.setdiff1d(np.arange(NUM_VERTICES), list(targets.values()))
    perm[perm < 0] = rest_old
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(NUM_VERTICES)
    verts, weights, regressor = verts[perm], weights[perm], regressor[:, perm]
    gendered_verts = gendered_verts[perm]
    faces = inverse[faces]
    core_mask = np.zeros(NUM_VERTICES, bool)
    core_mask[inverse[np.arange(core_n)]] = True

    normals = _vertex_normals(verts, faces)

    # Face landmarks: project the 2D layout onto the front of the head.
    face_cand = np.nonzero(
        core_mask[faces].all(1)
        & (verts[faces].mean(1)[:, 1] > 0.30)
        & (
            np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])[:, 2]
            > 0
        )
    )[0]
    lmk_faces, lmk_bary = _project_to_front(verts, faces, face_cand, _landmark_layout())
    contour_xy = np.stack(
        [np.linspace(-0.07, 0.07, 17), 0.30 + 0.045 * np.abs(np.linspace(-1, 1, 17)) ** 1.5], -1
    )
    contour_faces, contour_bary = _project_to_front(verts, faces, face_cand, contour_xy)
    dyn_faces = np.repeat(contour_faces[None], 79, 0)
    dyn_bary = np.repeat(contour_bary[None], 79, 0)

    shapedirs = _shape_directions(verts, normals, weights, joints, core_mask, rng, num_betas)
    posedirs = _pose_directions(normals, weights, rng)
    comps_l, mean_l = _hand_pca(rng)

    kintree = np.stack([np.array(PARENTS, dtype=np.int64), np.arange(NUM_JOINTS, dtype=np.int64)])
    kintree[0, 0] = 4294967295  # the official files store the root's parent as uint32 -1
    return {
        "v_template": gendered_verts.astype(np.float64),
        "f": faces.astype(np.uint32),
        "weights": weights.astype(np.float64),
        "J_regressor": regressor.astype(np.float64),
        "kintree_table": kintree,
        "shapedirs": shapedirs.astype(np.float32),
        "posedirs": posedirs.astype(np.float32),
        "hands_componentsl": comps_l,
        "hands_componentsr": _mirror_hand(comps_l),
        "hands_meanl": mean_l,
        "hands_meanr": _mirror_hand(mean_l),
        "lmk_faces_idx": lmk_faces.astype(np.int64),
        "lmk_bary_coords": lmk_bary.astype(np.float64),
        "dynamic_lmk_faces_idx": dyn_faces.astype(np.int64),
        "dynamic_lmk_bary_coords": dyn_bary.astype(np.float64),
        "gender": np.array(gender),
    }


def _rbf_fields(points, centers, sigma):
    d2 = np.sum((points[:, None, :] - centers[None]) ** 2, -1)
    return np.exp(-d2 / (2 * sigma**2))


def _shape_directions(verts, normals, weights, joints, core_mask, rng, num_betas):
    v = verts
    n = len(v)
    y = v[:, 1]
    dirs = np.zeros((n, 3, num_betas))
    # 0: overall size (height and breadth together), about the pelvis.
    dirs[:, :, 0] = 0.06 * (v - joints[0])
    # 1: girth: out along the normals, most on the belly and hips.
    belly = np.exp(-(((y + 0.15) / 0.25) ** 2)) * core_mask
    dirs[:, :, 1] = normals * (0.012 + 0.03 * belly)[:, None]
    # 2: leg length: everything below the hips moves down, ramped through the pelvis.
    below = _smoothstep((-0.30 - y) / 0.12)
    dirs[:, 1, 2] = -0.04 * below * np.clip((-0.30 - y) / 0.85, 0.0, 1.0) - 0.02 * below
    # 3: shoulder breadth: arms and hands slide outwards, upper torso widens.
    upper = _smoothstep((y - 0.05) / 0.12)
    dirs[:, 0, 3] = 0.03 * np.tanh(v[:, 0] / 0.1) * upper
    # 4: head size.
    head_c = joints[15] + np.array([0.0, 0.08, 0.01])
    on_head = _smoothstep((y - 0.27) / 0.04)
    dirs[:, :, 4] = 0.08 * (v - head_c) * on_head[:, None]
    # 5: chest depth; 6: hip breadth; 7: limb thickness; 8-9: posture-free torso length and neck.
    dirs[:, 2, 5] = 0.025 * np.exp(-(((y - 0.08) / 0.12) ** 2)) * core_mask * np.sign(v[:, 2])
    dirs[:, 0, 6] = 0.025 * np.exp(-(((y + 0.30) / 0.12) ** 2)) * np.tanh(v[:, 0] / 0.08)
    dirs[:, :, 7] = normals * (0.008 * (~core_mask))[:, None]
    dirs[:, 1, 8] = 0.03 * _smoothstep((y + 0.2) / 0.4)
    dirs[:, 1, 9] = 0.015 * _smoothstep((y - 0.22) / 0.06)
    # Higher directions: smooth random bulges along the normals, decaying in size like a PCA basis.
    centers = v[rng.choice(n, 64, replace=False)]
    fields = _rbf_fields(v, centers, 0.09)  # (n, 64)
    coeffs = rng.normal(size=(64, num_betas - 10))
    decay = 0.01 * np.exp(-np.arange(num_betas - 10) / 60.0)
    dirs[:, :, 10:] = normals[:, :, None] * (fields @ coeffs * decay)[:, None, :]
    num_expr = 10 if num_betas == 10 else NUM_EXPRESSION_DIRS
    # Expression: bulges on the face only (front of the head, eyes to chin), a few millimetres.
    face = (core_mask & (y > 0.28) & (y < 0.43) & (v[:, 2] > 0.03)).astype(np.float64)
    face_ids = np.nonzero(face)[0]
    fcenters = v[face_ids[rng.choice(len(face_ids), 24, replace=False)]]
    ffields = _rbf_fields(v, fcenters, 0.02) * face[:, None]
    fcoeffs = rng.normal(size=(24, num_expr))
    fdecay = 0.004 * np.exp(-np.arange(num_expr) / 40.0)
    expr = normals[:, :, None] * (ffields @ fcoeffs * fdecay)[:, None, :]
    # The mouth opens with the first expression component.
    mouth = np.exp(-((v[:, 0] / 0.02) ** 2) - ((y - 0.335) / 0.008) ** 2) * face
    expr[:, 1, 0] += -0.006 * mouth * np.sign(y - 0.335)
    return np.concatenate([dirs, expr], axis=2)


def _pose_directions(normals, weights, rng):
    """Small pose correctives: bulges along the normal where a joint's weight is blended, driven by
    that joint's (R - I) entries (the SMPL pose feature)."""
    blend = 4.0 * weights[:, 1:] * (1.0 - weights[:, 1:])  # (n, 54): peaks in transition zones
    coeff = 0.004 * rng.normal(size=(NUM_JOINTS - 1, 9))
    feature_gain = blend[:, :, None] * coeff[None]  # (n, 54, 9)
    return normals[:, :, None] * feature_gain.reshape(len(normals), 1, NUM_POSE_FEATURES)


def write_synthetic_smplx(
    path, gender: str = "neutral", seed: int = 0, num_betas: int = NUM_SHAPE_DIRS
) -> Path:
    """Write a synthetic SMPL-X `.npz` to `path` (a file, or a folder that gets SMPLX_<GENDER>.npz).

    Name files SMPLX_NEUTRAL.npz / SMPLX_MALE.npz / SMPLX_FEMALE.npz so that `smplx.create` infers
    the model type. num_betas is 300 (v1.1 layout, shapedirs (10475, 3, 400)) or 10 (v1.0 layout,
    (10475, 3, 20)).
    """
    path = Path(path)
    if path.suffix != ".npz":
        path = path / f"SMPLX_{gender.upper()}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    data = build_synthetic_smplx(gender=gender, seed=seed, num_betas=num_betas)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, **data)
    os.replace(tmp, path)  # atomic: concurrent test workers never read a half-written file
    return path


def default_cache_dir() -> Path:
    """The package's cache root (`zerohsi_jax.cache.cache_root`)."""
    from ..cache import cache_root

    return cache_root()


def _generator_fingerprint() -> str:
    """Short hash of the generator (this file and the skeleton tables it builds from), so a cached
    model is regenerated whenever either changes."""
    import hashlib

    digest = hashlib.sha1(Path(__file__).read_bytes())
    digest.update(Path(__file__).with_name("joint_names.py").read_bytes())
    return digest.hexdigest()[:10]


def synthetic_smplx_path(
    cache_dir=None, gender: str = "neutral", seed: int = 0, num_betas: int = NUM_SHAPE_DIRS
) -> Path:
    """Path of a cached synthetic model file, written on first use (cache_dir defaults to
    $ZEROHSI_JAX_CACHE or ~/.cache/zerohsi_jax). The folder name carries the seed, the layout and a
    hash of the generator, and files are written atomically, so concurrent callers are safe."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache / f"synthetic_smplx_{_generator_fingerprint()}_seed{seed}_b{num_betas}"
    path = folder / f"SMPLX_{gender.upper()}.npz"
    if not path.exists():
        write_synthetic_smplx(path, gender=gender, seed=seed, num_betas=num_betas)
        _remove_stale_caches(cache, folder.name.split("_")[2])
    return path


def _remove_stale_caches(cache: Path, fingerprint: str) -> None:
    """Best-effort removal of files written by older versions of the generator (~120 MB each)."""
    import shutil

    for old in cache.glob("synthetic_smplx_*"):
        parts = old.name.split("_")
        if old.is_dir() and len(parts) > 2 and parts[2] != fingerprint:
            shutil.rmtree(old, ignore_errors=True)
