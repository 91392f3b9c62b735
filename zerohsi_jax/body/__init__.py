"""SMPL-X body model (its linear-blend-skinning steps in `lbs`) and VPoser pose prior, in JAX (no
Torch at run time). Rotations are in `zerohsi_jax.geometry`; the synthetic stand-in body model is
in `zerohsi_jax.synthetic`.

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
from .smplx_model import (
    SMPLX,
    ModelFileError,
    ModelFileNotFoundError,
    SMPLXOutput,
    betas_for,
    foot_vertex_ids,
    hand_vertex_ids,
)
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
    "betas_for",
    "foot_vertex_ids",
    "hand_vertex_ids",
    "random_vposer",
]
