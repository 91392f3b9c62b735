"""The person of every frame, for display: the avatar's posed Gaussians or the SMPL-X mesh."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Float

from .splats import SplatArrays, splat_arrays


@eqx.filter_jit
def _posed_avatar(avatar, global_orient, body_pose, transl, camera_position, jaw_pose, left_hand, right_hand):
    return avatar(global_orient, body_pose, transl, camera_position, jaw_pose=jaw_pose, left_hand_pose=left_hand,
                  right_hand_pose=right_hand)


def camera_centres(viewmats: Float[np.ndarray, "T 4 4"]) -> Float[np.ndarray, "T 3"]:
    """World positions of cameras given world-to-camera matrices: -R^T t."""
    r, t = viewmats[:, :3, :3], viewmats[:, :3, 3]
    return -np.einsum("tji,tj->ti", r, t)


def avatar_frames(avatar, params: dict[str, np.ndarray], viewmats: Float[np.ndarray, "T 4 4"]) -> SplatArrays:
    """The avatar's world Gaussians at every frame (T, N, ...), each coloured as seen from that
    frame's tracked camera (the avatar conditions its colour on the view direction). One compiled
    program, called frame by frame: a large avatar's T frames never sit in memory at once on the device."""
    eyes = camera_centres(np.asarray(viewmats, np.float64))
    # The fit leaves the hands flat; only hands that moved need the avatar's hand path.
    hands = any(np.any(params.get(k, 0.0)) for k in ("left_hand_pose", "right_hand_pose"))
    out = []
    for t in range(eyes.shape[0]):
        pick = lambda key, t=t: jnp.asarray(params[key][t], jnp.float32)  # noqa: E731
        g = _posed_avatar(avatar, pick("global_orient"), pick("body_pose"), pick("transl"),
                          jnp.asarray(eyes[t], jnp.float32), pick("jaw_pose") if "jaw_pose" in params else None,
                          pick("left_hand_pose") if hands else None, pick("right_hand_pose") if hands else None)
        out.append(splat_arrays(g))
    return SplatArrays(*(np.stack([getattr(f, k) for f in out]) for k in ("centers", "covariances", "rgbs",
                                                                           "opacities")))


def mesh_frames(body, params: dict[str, np.ndarray]) -> tuple[Float[np.ndarray, "T V 3"], np.ndarray]:
    """SMPL-X vertices of every frame (with the run's betas) and the faces."""
    keys = ("betas", "expression", "global_orient", "body_pose", "jaw_pose", "leye_pose", "reye_pose",
            "left_hand_pose", "right_hand_pose", "transl")
    kwargs = {k: jnp.asarray(params[k], jnp.float32) for k in keys if k in params}
    if "betas" in kwargs:
        kwargs["betas"] = _fit_width(kwargs["betas"], body.num_betas)
    if "expression" in kwargs:
        kwargs["expression"] = _fit_width(kwargs["expression"], body.num_expression_coeffs)
    out = body(**kwargs)
    return np.asarray(out.vertices, np.float32), np.asarray(body.faces, np.int64)


def _fit_width(x, n: int):
    """Cut or zero-pad the last axis to the model's count (a file may carry more or fewer betas)."""
    if x.shape[-1] >= n:
        return x[..., :n]
    return jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, n - x.shape[-1])])


__all__ = ["avatar_frames", "camera_centres", "mesh_frames"]
