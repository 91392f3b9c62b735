"""The synthetic body's mesh: a torso-neck-head surface of revolution with elliptic cross-sections,
capsule limbs through the joints, a palm with five three-segment fingers, feet, eyeballs, a nose and
ears (10,475 vertices, the SMPL-X count), with skinning weights that blend smoothly across every
joint, the joint regressor's rings, the face landmarks, the hand pose space and the shape,
expression and pose blend directions."""

from __future__ import annotations

import numpy as np

from ..body.joint_names import EXPRESSION_SPACE_DIM, NUM_JOINTS, NUM_POSE_FEATURES, NUM_VERTICES
from .body_skeleton import FINGER_LAYOUT, FINGERS, JOINT_INDEX, SOLE_Y, design_skeleton, unit

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
        tangent = unit(np.gradient(centers, axis=0))
        u = np.broadcast_to(np.asarray(frame_u, dtype=np.float64), centers.shape)
        u = unit(u - np.sum(u * tangent, axis=-1, keepdims=True) * tangent)
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
    t0 = unit(centers[1] - centers[0])
    t1 = unit(centers[-1] - centers[-2])
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
    hip, knee, ankle = (joints[JOINT_INDEX[f"{side}_{n}"]] for n in ("hip", "knee", "ankle"))
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
    shoulder, elbow, wrist = (joints[JOINT_INDEX[f"{side}_{n}"]] for n in ("shoulder", "elbow", "wrist"))
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
    wrist = joints[JOINT_INDEX[f"{side}_wrist"]]
    knuckle_x = np.mean([joints[JOINT_INDEX[f"{side}_{f}1"]][0] for f in ("index", "middle", "ring", "pinky")])
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
    finger_bases = {f: joints[JOINT_INDEX[f"{side}_{f}1"]] for f in ("index", "middle", "ring", "pinky")}
    near_knuckles = _smoothstep((along - 0.78) / 0.25)
    logits = np.stack([-(((part.verts[:, 2] - p[2]) / 0.008) ** 2) for p in finger_bases.values()], -1)
    soft = np.exp(logits - logits.max(-1, keepdims=True))
    soft /= soft.sum(-1, keepdims=True)
    for i, f in enumerate(finger_bases):
        w[:, JOINT_INDEX[f"{side}_{f}1"]] += 0.6 * near_knuckles * soft[:, i]
    thumb_base = joints[JOINT_INDEX[f"{side}_thumb1"]]
    near_thumb = 0.7 * np.exp(-np.sum((part.verts - thumb_base) ** 2, -1) / 0.018**2)
    w[:, JOINT_INDEX[f"{side}_thumb1"]] += near_thumb
    w[:, wr] = np.clip(1.0 - w.sum(1) + w[:, wr], 0.0, None)
    part.weights = w / w.sum(1, keepdims=True)
    part.regress = {}
    return part


def _finger_part(side, finger, joints, tips, n_rings, n_seg):
    names = [f"{side}_{finger}{k}" for k in (1, 2, 3)]
    p1, p2, p3 = (joints[JOINT_INDEX[n]] for n in names)
    tip = tips[(side, finger)]
    base_r = FINGER_LAYOUT[finger][3]
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
    wrist = JOINT_INDEX[f"{side}_wrist"]
    j1, j2, j3 = (JOINT_INDEX[n] for n in names)
    part.weights = _chain_weights(
        part.axial, [wrist, j1, j2, j3], [k[0] - 0.002, k[1], k[2]], [0.014, 0.012, 0.010]
    )
    part.regress = {j1: part.rings_around(k[0]), j2: part.rings_around(k[1]), j3: part.rings_around(k[2])}
    return part


def _foot_part(side, joints, n_rings, n_seg):
    sgn = 1.0 if side == "left" else -1.0
    ankle, ball = joints[JOINT_INDEX[f"{side}_ankle"]], joints[JOINT_INDEX[f"{side}_foot"]]
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
    ankle_j, foot_j = JOINT_INDEX[f"{side}_ankle"], JOINT_INDEX[f"{side}_foot"]
    part.weights = _chain_weights(part.axial, [ankle_j, foot_j], [ball[2]], [0.035])
    part.regress = {foot_j: part.rings_around(ball[2])}
    return part


def _eye_part(side, joints, n_rings, n_seg):
    center = joints[JOINT_INDEX[f"{side}_eye_smplhf"]]
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
    part.weights[:, JOINT_INDEX[f"{side}_eye_smplhf"]] = 1.0
    part.regress = {JOINT_INDEX[f"{side}_eye_smplhf"]: np.arange(len(part.verts))}
    return part


def _core_weights(part, joints):
    v = part.verts
    y = v[:, 1]
    ys = [joints[JOINT_INDEX[n]][1] for n in ("spine1", "spine2", "spine3", "neck", "head")]
    w = _chain_weights(y, [0, 3, 6, 9, 12, 15], ys, [0.07, 0.07, 0.07, 0.04, 0.04])
    ax = np.abs(v[:, 0])
    for side, sgn in (("left", 1.0), ("right", -1.0)):
        on_side = (np.sign(v[:, 0]) == sgn) | (ax < 1e-9)
        shoulder = joints[JOINT_INDEX[f"{side}_shoulder"]]
        # Upper chest / top of the shoulder follows the collar; its outer end follows the shoulder.
        collar_amt = (
            _smoothstep((ax - 0.04) / 0.07)
            * _smoothstep((y - 0.04) / 0.09)
            * (1 - _smoothstep((y - 0.215) / 0.03))
            * on_side
        )
        w = _blend_towards(w, JOINT_INDEX[f"{side}_collar"], 0.85 * collar_amt)
        sh_amt = (
            _smoothstep((ax - (abs(shoulder[0]) - 0.04)) / 0.04) * _smoothstep((y - 0.08) / 0.06) * on_side
        )
        w = _blend_towards(w, JOINT_INDEX[f"{side}_shoulder"], 0.6 * sh_amt)
        # The crotch and buttocks follow the thighs.
        hip = joints[JOINT_INDEX[f"{side}_hip"]]
        hip_amt = _smoothstep((ax - 0.02) / 0.08) * _smoothstep((hip[1] + 0.03 - y) / 0.09) * on_side
        w = _blend_towards(w, JOINT_INDEX[f"{side}_hip"], 0.6 * hip_amt)
    # Lower face in front of the ears opens with the jaw.
    jaw_amt = (
        (1 - _smoothstep((y - 0.312) / 0.045)) * _smoothstep((y - 0.255) / 0.05) * _smoothstep(v[:, 2] / 0.08)
    )
    w = _blend_towards(w, JOINT_INDEX["jaw"], 0.9 * jaw_amt)
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


def build_parts(gender: str):
    joints, tips, scale_fn = design_skeleton(gender)
    parts = []
    for side in ("left", "right"):
        parts.append(_leg_part(side, joints, *_LIMB_RES["leg"]))
        parts.append(_arm_part(side, joints, *_LIMB_RES["arm"]))
        parts.append(_palm_part(side, joints, *_LIMB_RES["palm"]))
        for finger in FINGERS:
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
    core.regress[JOINT_INDEX["jaw"]] = np.nonzero(np.abs(core.verts[:, 1] - joints[JOINT_INDEX["jaw"]][1]) < 0.012)[0]
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


def vertex_normals(verts, faces):
    fn = np.cross(verts[faces[:, 1]] - verts[faces[:, 0]], verts[faces[:, 2]] - verts[faces[:, 0]])
    normals = np.zeros_like(verts)
    for k in range(3):
        np.add.at(normals, faces[:, k], fn)
    return normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)


def regressor_row(points, ids, target):
    """Weights over `points[ids]` closest to uniform that sum to 1 and average to `target`."""
    p = points[ids]
    k = len(ids)
    a = np.concatenate([p.T, np.ones((1, k))], 0)  # (4, k)
    u = np.full(k, 1.0 / k)
    b = np.concatenate([target, [1.0]])
    return u + np.linalg.pinv(a) @ (b - a @ u)


def landmark_layout():
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


def project_to_front(verts, faces, candidate_faces, xy):
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


def hand_pca(rng):
    """45x45 orthonormal hand components (rows) and a relaxed mean pose, for the left hand; the right
    hand mirrors them (axis-angle (x, y, z) -> (x, -y, -z))."""
    flex = np.zeros((15, 3))
    flex[:12] = (0.0, 0.0, -1.0)  # fingers along +x, palm down: curling rotates about -z
    flex[12:] = unit((0.45, 0.35, -0.8))  # thumb curls across the palm
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


def mirror_hand(arr):
    a = np.asarray(arr).reshape(*np.shape(arr)[:-1], 15, 3).copy()
    a[..., 1:] *= -1
    return a.reshape(np.shape(arr))



def _rbf_fields(points, centers, sigma):
    d2 = np.sum((points[:, None, :] - centers[None]) ** 2, -1)
    return np.exp(-d2 / (2 * sigma**2))


def shape_directions(verts, normals, weights, joints, core_mask, rng, num_betas):
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
    num_expr = 10 if num_betas == 10 else EXPRESSION_SPACE_DIM
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


def pose_directions(normals, weights, rng):
    """Small pose correctives: bulges along the normal where a joint's weight is blended, driven by
    that joint's (R - I) entries (the SMPL pose feature)."""
    blend = 4.0 * weights[:, 1:] * (1.0 - weights[:, 1:])  # (n, 54): peaks in transition zones
    coeff = 0.004 * rng.normal(size=(NUM_JOINTS - 1, 9))
    feature_gain = blend[:, :, None] * coeff[None]  # (n, 54, 9)
    return normals[:, :, None] * feature_gain.reshape(len(normals), 1, NUM_POSE_FEATURES)
