"""The data the stages pass along: inputs shared by all seeds, per-seed observations, and the
per-frame state (camera, human pose, object pose, colour net) carried from frame to frame."""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..geometry import axis_angle_to_matrix, rigid
from ..splat import Camera, Gaussians

HUMAN_GROUP, OBJECT_GROUP, SCENE_GROUP = 0, 1, 2
NUM_GROUPS = 3


class HumanPose(eqx.Module):
    """M_t = (r_t, phi_t, Theta_t): root translation, global orientation, 21 body joints (axis-angle)."""

    transl: Float[Array, "*b 3"]
    global_orient: Float[Array, "*b 3"]
    body_pose: Float[Array, "*b 63"]


class ObjectPose(eqx.Module):
    """P_t: the object's frame (centred on its Gaussians' centroid) in world coordinates."""

    rotation: Float[Array, "*b 3 3"]
    translation: Float[Array, "*b 3"]

    def matrix(self) -> Float[Array, "*b 4 4"]:
        return rigid(self.rotation, self.translation)

    def compose_relative(self, delta: Float[Array, "6"]) -> ObjectPose:
        """P_t = P o P_{t-1}: rotate about the object's own centre by exp(delta[:3]), then move
        by delta[3:] (a centred parametrisation keeps rotation and translation decoupled)."""
        return ObjectPose(axis_angle_to_matrix(delta[:3]) @ self.rotation, self.translation + delta[3:])


def relative_transform(delta: Float[Array, "6"]) -> Float[Array, "4 4"]:
    """A rigid 4x4 from (axis-angle, translation)."""
    return rigid(axis_angle_to_matrix(delta[:3]), delta[3:])


class SceneInputs(eqx.Module):
    """What every seed shares: the Gaussian scene and object, the avatar, the body model and the
    initial camera (intrinsics and T_0)."""

    scene: Gaussians
    object: Gaussians | None
    """Object Gaussians in the object's frame, centred at the origin; None for static scenarios."""
    avatar: eqx.Module
    body: eqx.Module
    camera: Camera


class Observations(eqx.Module):
    """One video and its segmentation (a leading seed axis when several videos are batched)."""

    frames: Float[Array, "*s T H W 3"]
    human_masks: Float[Array, "*s T H W"]
    object_masks: Float[Array, "*s T H W"]
    pose_estimates: Float[Array, "*s T 63"] | None = None


class FrameState(eqx.Module):
    """Everything frame t+1 starts from."""

    viewmat: Float[Array, "4 4"]
    human: HumanPose
    object: ObjectPose
    color: eqx.Module
    """The avatar's colour-net arrays (eqx.partition of the avatar with its colour filter)."""
    object_depth0: Float[Array, ""]
    """D_O^0 of eq. 12, the reference of the depth loss."""
    opt_state: object = None
    """The HSI fit's Adam state after this frame, kept only when `HSIFitConfig.adam_state` is 'carry'."""


class RasterCounts(NamedTuple):
    """What renders needed of the rasterizer's static capacities (the largest over a fit's
    iterations, or with leading seed/frame axes): the pairs dropped, and the exact counts that
    `splat.grown_capacity(config, counts)` sizes a re-run from."""

    overflow: jax.Array
    max_tile_count: jax.Array
    num_pairs: jax.Array
    dynamic_pairs: jax.Array
    """The avatar's and object's pairs alone, in a bound render (`HSIFitConfig.bind_scene`: what
    `RasterConfig.dynamic_pair_capacity` must hold); 0 in a full render."""

    @classmethod
    def of(cls, out, dynamic_pairs=None) -> RasterCounts:
        """The counts of one `RenderOutput` (and of its dynamic pairs, when bound)."""
        if dynamic_pairs is None:
            dynamic_pairs = jnp.zeros_like(out.num_pairs)
        return cls(out.overflow, out.max_tile_count, out.num_pairs, dynamic_pairs)

    @classmethod
    def zero(cls) -> RasterCounts:
        """The counts of a stage that rendered nothing."""
        return cls(*(jnp.int32(0),) * 4)

    def largest(self) -> RasterCounts:
        """The largest of each count over every axis (a fit's iterations)."""
        return RasterCounts(*(jnp.max(x) for x in self))


def posed_object(obj: Gaussians | None, pose: ObjectPose) -> Gaussians | None:
    if obj is None:
        return None
    return obj.transform(pose.rotation, pose.translation)


def moving_gaussians(human_g: Gaussians, obj: Gaussians | None, object_pose: ObjectPose) -> Gaussians:
    """G_H^t and G_O^t (posed) concatenated with group ids 0 and 1: what moves during a fit."""
    parts = [human_g.with_group(HUMAN_GROUP)]
    if obj is not None:
        parts.append(posed_object(obj, object_pose).with_group(OBJECT_GROUP))
    return Gaussians.concatenate(parts)


def compose_gaussians(avatar, human: HumanPose, obj: Gaussians | None, object_pose: ObjectPose,
                      scene: Gaussians, camera_position) -> Gaussians:
    """G_H^t, G_O^t and G_S concatenated with group ids 0, 1, 2 (eq. 9's render input)."""
    human_g = avatar(human.global_orient, human.body_pose, human.transl, camera_position)
    return Gaussians.concatenate([moving_gaussians(human_g, obj, object_pose), scene.with_group(SCENE_GROUP)])


def tree_stack(trees):
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def tree_index(tree, i):
    return jax.tree.map(lambda x: x[i], tree)
