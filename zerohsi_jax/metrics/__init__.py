"""Metrics: errors against ground truth, and (issue 7) the paper's plausibility metrics."""

from .ground_truth import camera_centers, ground_truth_errors, mpjpe, per_frame_joint_errors_mm, rotation_angle_deg

__all__ = ["camera_centers", "ground_truth_errors", "mpjpe", "per_frame_joint_errors_mm", "rotation_angle_deg"]
