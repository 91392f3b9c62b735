"""4D reconstruction: camera tracking, per-frame HSI fit and VPoser refinement (ZeroHSI sec. 3.3-3.4)."""

from . import losses
from .config import CameraTrackingConfig, HSIFitConfig, ReconstructConfig, RefineConfig, paper_schedule, quick_schedule
from .pipeline import InitialState, Reconstruction, ReconstructionDiverged, reconstruct, smplx_param_arrays
from .state import HumanPose, ObjectPose, Observations, SceneInputs

__all__ = [
    "CameraTrackingConfig",
    "HSIFitConfig",
    "HumanPose",
    "InitialState",
    "ObjectPose",
    "Observations",
    "ReconstructConfig",
    "Reconstruction",
    "ReconstructionDiverged",
    "RefineConfig",
    "SceneInputs",
    "losses",
    "paper_schedule",
    "quick_schedule",
    "reconstruct",
    "smplx_param_arrays",
]
