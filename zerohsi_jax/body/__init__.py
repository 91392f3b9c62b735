"""SMPL-X body model, VPoser pose prior and rotation helpers, in JAX (no Torch at run time).

from zerohsi_jax.body import SMPLX
model = SMPLX.load(path, num_betas=10, num_expression_coeffs=10, use_pca=True, num_pca_comps=6)
out = model(betas=..., body_pose=..., ...)   # smplx's keyword names
out.vertices, out.joints, out.joint_transforms
"""

from .joint_names import (
    EXTRA_VERTEX_IDS,
    JOINT_NAMES,
    LANDMARK_NAMES,
    NUM_JOINTS,
    OUTPUT_JOINT_NAMES,
    PARENTS,
)
from .rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    matrix_to_rot6d,
    quaternion_to_axis_angle,
    rot6d_to_matrix,
)
from .smplx_model import (
    SMPLX,
    ModelFileError,
    ModelFileNotFoundError,
    SMPLXOutput,
    betas_for,
    foot_vertex_ids,
    hand_vertex_ids,
)
from .synthetic import build_synthetic_smplx, synthetic_smplx_path, write_synthetic_smplx
from .vposer import VPoser, VPoserDecoded, VPoserFileNotFoundError, random_vposer

__all__ = [
    "EXTRA_VERTEX_IDS",
    "JOINT_NAMES",
    "LANDMARK_NAMES",
    "NUM_JOINTS",
    "OUTPUT_JOINT_NAMES",
    "PARENTS",
    "SMPLX",
    "ModelFileError",
    "ModelFileNotFoundError",
    "SMPLXOutput",
    "VPoser",
    "VPoserDecoded",
    "VPoserFileNotFoundError",
    "axis_angle_to_matrix",
    "betas_for",
    "build_synthetic_smplx",
    "foot_vertex_ids",
    "hand_vertex_ids",
    "matrix_to_axis_angle",
    "matrix_to_quaternion",
    "matrix_to_rot6d",
    "quaternion_to_axis_angle",
    "random_vposer",
    "rot6d_to_matrix",
    "synthetic_smplx_path",
    "write_synthetic_smplx",
]
