"""SMPL-X joint names, kinematic tree, the vertex ids smplx 0.1.28 samples as extra joints, and the
model's sizes (joint, vertex and blend-shape counts): the one place that states them."""

from __future__ import annotations

import numpy as np

_HAND_FINGERS = ("index", "middle", "pinky", "ring", "thumb")

# The 55 joints of the kinematic tree, in the order of the model file and of the full pose.
JOINT_NAMES: tuple[str, ...] = (
    "pelvis",
    "left_hip",
    "right_hip",
    "spine1",
    "left_knee",
    "right_knee",
    "spine2",
    "left_ankle",
    "right_ankle",
    "spine3",
    "left_foot",
    "right_foot",
    "neck",
    "left_collar",
    "right_collar",
    "head",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "jaw",
    "left_eye_smplhf",
    "right_eye_smplhf",
) + tuple(f"{side}_{finger}{k}" for side in ("left", "right") for finger in _HAND_FINGERS for k in (1, 2, 3))

NUM_JOINTS = 55
NUM_BODY_JOINTS = 21
NUM_HAND_JOINTS = 15
NUM_VERTICES = 10475
NUM_POSE_FEATURES = 9 * (NUM_JOINTS - 1)  # R_j - I of every joint but the root
# Blend directions of the SMPL-X v1.1 files: 300 shape and 100 expression directions (v1.0: 10 + 10).
SHAPE_SPACE_DIM = 300
EXPRESSION_SPACE_DIM = 100

# parents[j] for each joint (-1 for the root); joint j's parent always has a smaller index.
PARENTS: tuple[int, ...] = (
    -1,
    0,
    0,
    0,
    1,
    2,
    3,
    4,
    5,
    6,
    7,
    8,
    9,
    9,
    9,
    12,
    13,
    14,
    16,
    17,
    18,
    19,
    15,
    15,
    15,
    20,
    25,
    26,
    20,
    28,
    29,
    20,
    31,
    32,
    20,
    34,
    35,
    20,
    37,
    38,
    21,
    40,
    41,
    21,
    43,
    44,
    21,
    46,
    47,
    21,
    49,
    50,
    21,
    52,
    53,
)

# Vertices smplx appends after the 55 tree joints (its VertexJointSelector with the 'smplx' ids):
# 5 face points, 6 feet points, then the 10 finger tips (left hand first, thumb to pinky).
EXTRA_VERTEX_JOINTS: tuple[tuple[str, int], ...] = (
    ("nose", 9120),
    ("right_eye", 9929),
    ("left_eye", 9448),
    ("right_ear", 616),
    ("left_ear", 6),
    ("left_big_toe", 5770),
    ("left_small_toe", 5780),
    ("left_heel", 8846),
    ("right_big_toe", 8463),
    ("right_small_toe", 8474),
    ("right_heel", 8635),
    ("left_thumb", 5361),
    ("left_index", 4933),
    ("left_middle", 5058),
    ("left_ring", 5169),
    ("left_pinky", 5286),
    ("right_thumb", 8079),
    ("right_index", 7669),
    ("right_middle", 7794),
    ("right_ring", 7905),
    ("right_pinky", 8022),
)
EXTRA_VERTEX_IDS = np.array([vid for _, vid in EXTRA_VERTEX_JOINTS], dtype=np.int32)

# The 51 static face landmarks (the 68-point layout without the jaw contour), in file order.
LANDMARK_NAMES: tuple[str, ...] = (
    "right_eye_brow1",
    "right_eye_brow2",
    "right_eye_brow3",
    "right_eye_brow4",
    "right_eye_brow5",
    "left_eye_brow5",
    "left_eye_brow4",
    "left_eye_brow3",
    "left_eye_brow2",
    "left_eye_brow1",
    "nose1",
    "nose2",
    "nose3",
    "nose4",
    "right_nose_2",
    "right_nose_1",
    "nose_middle",
    "left_nose_1",
    "left_nose_2",
    "right_eye1",
    "right_eye2",
    "right_eye3",
    "right_eye4",
    "right_eye5",
    "right_eye6",
    "left_eye4",
    "left_eye3",
    "left_eye2",
    "left_eye1",
    "left_eye6",
    "left_eye5",
    "right_mouth_1",
    "right_mouth_2",
    "right_mouth_3",
    "mouth_top",
    "left_mouth_3",
    "left_mouth_2",
    "left_mouth_1",
    "left_mouth_5",
    "left_mouth_4",
    "mouth_bottom",
    "right_mouth_4",
    "right_mouth_5",
    "right_lip_1",
    "right_lip_2",
    "lip_top",
    "left_lip_2",
    "left_lip_1",
    "left_lip_3",
    "lip_bottom",
    "right_lip_3",
)
NUM_LANDMARKS = 51

# Names of the 127 joints the forward pass returns, in smplx's default order.
OUTPUT_JOINT_NAMES: tuple[str, ...] = JOINT_NAMES + tuple(n for n, _ in EXTRA_VERTEX_JOINTS) + LANDMARK_NAMES
NUM_OUTPUT_JOINTS = 127

HAND_JOINTS = {
    side: (JOINT_NAMES.index(f"{side}_wrist"),)
    + tuple(JOINT_NAMES.index(f"{side}_{finger}{k}") for finger in _HAND_FINGERS for k in (1, 2, 3))
    for side in ("left", "right")
}
FOOT_JOINTS = {
    side: (JOINT_NAMES.index(f"{side}_ankle"), JOINT_NAMES.index(f"{side}_foot"))
    for side in ("left", "right")
}

assert len(JOINT_NAMES) == NUM_JOINTS and len(PARENTS) == NUM_JOINTS
assert len(LANDMARK_NAMES) == NUM_LANDMARKS and len(OUTPUT_JOINT_NAMES) == NUM_OUTPUT_JOINTS
