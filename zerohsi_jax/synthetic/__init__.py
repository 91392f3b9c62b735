"""Generated assets with known ground truth: a Gaussian room, furniture and a movable object."""

from .scene import SceneAssets, box_gaussians, make_object, make_room

__all__ = ["SceneAssets", "box_gaussians", "make_object", "make_room"]
