"""Animatable Gaussians avatar (Li et al., CVPR 2024) in Equinox: ZeroHSI's map
G_H = A(r, phi, Theta; T) of equation 6, from an SMPL-X pose and a camera to world Gaussians.

Public API
----------
`builtin_avatar(key_or_seed=0, smplx_model=None, *, size="small") -> AnimatableAvatar`
    Gaussians on an SMPL-X body (default: the synthetic one), official network structure at a
    small size, zeroed output layers: at initialisation it renders its template exactly.
    `smplx_model` is a `zerohsi_jax.body.SMPLX`, an SMPL-X `.npz` path, or None.
`load_avatar(path) -> AnimatableAvatar` / `save_avatar(avatar, path)`
    One Torch-free file (official state-dict keys + template). Official checkpoints are
    converted once with `python -m converters.avatar_to_eqx --checkpoint net.pt
    --template-dir DATA_DIR --smplx-model SMPLX_NEUTRAL.npz -o avatar.eqx`.
`avatar(global_orient (3,), body_pose (63,), transl (3,), camera_position (3,), *,
        jaw_pose=None, left_hand_pose=None, right_hand_pose=None, return_aux=False)`
    -> `zerohsi_jax.splat.Gaussians` in world coordinates (SH degree 0, colours RGB), or
    `(Gaussians, AvatarAux)` with the posed joints (55, 3), the world joint transforms
    (55, 4, 4, as `zerohsi_jax.body.SMPLX`'s `joint_transforms`), the non-rigid offsets and the
    network input. phi, Theta and hands are axis-angle (flat_hand_mean: zero hands are flat);
    `camera_position` is `camera.position` (it conditions the colour on the view direction).
    A pure function of its inputs: `eqx.filter_jit`, `jax.vmap` over poses and cameras
    (`eqx.filter_vmap(lambda a, *x: a(*x), in_axes=(None, 0, 0, 0, 0))`), `jax.grad`.
`avatar.skeleton(global_orient, body_pose, transl, ...)`
    -> (joints, world transforms, canonical-to-live transforms without the root, R_phi, t).
`avatar.color_filter(include_viewdir=False)` / `avatar.network_filter()`
    Pytrees of bools for `eqx.partition`: the colour net's trainable arrays (fixed noise maps
    excluded) / every network's. `color, rest = eqx.partition(avatar, avatar.color_filter())`
    splits off what the pipeline fine-tunes; `eqx.combine(color, rest)` rebuilds the avatar.

Modules: `layers` (StyleGAN2 layers, upfirdn2d), `styleunet` (DualStyleUNet), `skinning`
(SMPL-X kinematics, LBS), `model` (template, avatar), `builtin`, `io`, `statedict`.
"""

from .builtin import builtin_avatar
from .io import AvatarFileError, load_avatar, save_avatar
from .model import AnimatableAvatar, AvatarAux, AvatarTemplate
from .styleunet import DualStyleUNet, StyleUNetConfig

__all__ = [
    "AnimatableAvatar",
    "AvatarAux",
    "AvatarFileError",
    "AvatarTemplate",
    "DualStyleUNet",
    "StyleUNetConfig",
    "builtin_avatar",
    "load_avatar",
    "save_avatar",
]
