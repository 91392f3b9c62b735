"""Metrics: errors against a ground truth, and the paper's plausibility metrics."""

from .ground_truth import camera_centers, ground_truth_errors, mpjpe, per_frame_joint_errors_mm, rotation_angle_deg
from .plausibility import (
    SignedDistanceGrid,
    cached_sdf_grid,
    diversity,
    foot_sliding,
    hand_object_contact_ratio,
    object_penetration,
    scene_penetration,
    sdf_grid_from_mesh,
)

__all__ = [
    "SignedDistanceGrid",
    "cached_sdf_grid",
    "camera_centers",
    "diversity",
    "foot_sliding",
    "ground_truth_errors",
    "hand_object_contact_ratio",
    "mpjpe",
    "object_penetration",
    "per_frame_joint_errors_mm",
    "rotation_angle_deg",
    "scene_penetration",
    "sdf_grid_from_mesh",
]
