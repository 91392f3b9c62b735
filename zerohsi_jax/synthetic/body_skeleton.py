"""The synthetic body's skeleton: rest positions of the 55 SMPL-X joints of a plausible 1.7 m human
in SMPL-X's rest pose (T-pose, y up, facing +z, its left on +x, soles at y = -1.2, pelvis at
y = -0.25), the finger tips, and the map of the neutral body to a gender's proportions."""

from __future__ import annotations

import numpy as np

from ..body.joint_names import JOINT_NAMES, NUM_JOINTS

SOLE_Y = -1.20

JOINT_INDEX = {name: i for i, name in enumerate(JOINT_NAMES)}
FINGERS = ("index", "middle", "pinky", "ring", "thumb")

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
FINGER_LAYOUT = {
    "index": ((0.088, -0.008, 0.027), (1.0, -0.02, 0.08), (0.038, 0.023, 0.012, 0.006), 0.0090),
    "middle": ((0.092, -0.008, 0.009), (1.0, -0.02, 0.02), (0.043, 0.026, 0.014, 0.006), 0.0093),
    "ring": ((0.088, -0.008, -0.010), (1.0, -0.02, -0.05), (0.040, 0.025, 0.013, 0.006), 0.0088),
    "pinky": ((0.080, -0.009, -0.027), (1.0, -0.02, -0.12), (0.031, 0.019, 0.011, 0.005), 0.0078),
    "thumb": ((0.022, -0.014, 0.026), (0.80, -0.15, 0.58), (0.038, 0.030, 0.016, 0.006), 0.0115),
}


def unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _mirror_x(p):
    return np.array([-p[0], p[1], p[2]])


def design_skeleton(gender: str):
    """Rest joints (55, 3) and the finger tip positions, for the given gender's proportions."""
    joints = np.zeros((NUM_JOINTS, 3))
    for name, pos in _LEFT_AND_MIDLINE.items():
        joints[JOINT_INDEX[name]] = pos
        if name.startswith("left_"):
            joints[JOINT_INDEX["right_" + name[5:]]] = _mirror_x(pos)
    tips = {}
    for finger, (offset, direction, lengths, _) in FINGER_LAYOUT.items():
        d = unit(direction)
        p = joints[JOINT_INDEX["left_wrist"]] + np.asarray(offset)
        for k in range(3):
            joints[JOINT_INDEX[f"left_{finger}{k + 1}"]] = p
            joints[JOINT_INDEX[f"right_{finger}{k + 1}"]] = _mirror_x(p)
            p = p + lengths[k] * d
        tips[("left", finger)] = p + lengths[3] * d
        tips[("right", finger)] = _mirror_x(tips[("left", finger)])
    # Gender: overall height about the soles, and shoulder/hip breadth. The body is designed neutral
    # and mapped at the end, so every threshold below is in neutral coordinates.
    height, shoulders, hips = {
        "neutral": (1.0, 1.0, 1.0),
        "male": (1.04, 1.06, 0.97),
        "female": (0.96, 0.93, 1.06),
    }[gender]
    return joints, tips, gender_map(height, shoulders, hips)


def gender_map(height: float, shoulders: float, hips: float):
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
