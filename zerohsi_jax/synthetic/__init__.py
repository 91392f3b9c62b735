"""Generated assets with known ground truth, for the demo, the bench suite and the tests: a
stand-in SMPL-X body model file (`body_skeleton`, `body_mesh`, `body_model_file`), a Gaussian room,
furniture and a movable object (`scene`), motions (`motion`), the demo's pose prior (`pose_prior`)
and whole instances with their reference videos (`instances`)."""

from .body_model_file import build_synthetic_smplx, synthetic_smplx_path, write_synthetic_smplx
from .scene import SceneAssets, box_gaussians, box_mesh, make_object, make_room

__all__ = [
    "SceneAssets",
    "box_gaussians",
    "box_mesh",
    "build_synthetic_smplx",
    "make_object",
    "make_room",
    "synthetic_smplx_path",
    "write_synthetic_smplx",
]
