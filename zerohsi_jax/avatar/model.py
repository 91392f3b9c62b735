"""`AnimatableAvatar`: the map A(r, phi, Theta; T) of ZeroHSI's equation 6.

Forward pass (one pose, one camera; vmap for batches), following the official AvatarNet:

1. Joint transforms of the body pose Theta without the root, `A_wo`, and the canonical-to-live
   transforms `A_wo A_cano^-1` (`skinning.py`).
2. Pose map: the canonical points of the front position map, skinned by those transforms
   (hands left flat, as the official maps are) and
   scattered into the half-resolution front map (`get_pose_map`: nearest 0.5 downsampling
   keeps the even pixels, and the network sees the front half only).
3. View map: for each half-resolution map pixel, n . v between the posed normal and the unit
   direction to the camera (no gradient, as officially), split into front and back, each
   through the view-direction net.
4. Three DualStyleUNets on the pose map: position offsets (x 0.05), opacity/scale/rotation
   deltas (added to the canonical Gaussians' raw values), colour (with the view features).
5. Gaussians gather their values from the front|back output maps, are skinned (positions,
   and rotations left-multiplied by the blended 3x3), then moved by the root transform
   (phi about the pelvis, then r).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from zerohsi_jax.splat.gaussians import Gaussians, rgb_to_sh0

from ..body.lbs import apply_blended, blend_transforms
from ..geometry import matrix_to_quaternion, quaternion_to_matrix, rigid
from .layers import ViewDirNet
from .skinning import CANONICAL_BODY_POSE, full_pose, joint_transforms, root_transform
from .styleunet import DualStyleUNet

POSITION_SCALE = 0.05  # official: positions = canonical + 0.05 * position_net output
OFFICIAL_OPACITY = 0.1  # official canonical Gaussians start at opacity 0.1
NORMALIZE_EPS = 1e-3  # F.normalize(..., eps=1e-3) on the view directions


class AvatarTemplate(eqx.Module):
    """Everything of an avatar that is not a network: its skeleton, the canonical points that
    make the network inputs, and the canonical Gaussians with their map pixels and weights.

    Map pixels index the full front|back map of shape (S, 2S) (`gaussian_pixels`, row-major),
    the half-resolution front map (S/2, S/2) (`input_pixels`) and the half-resolution
    front|back map (S/2, S) (`view_pixels`). For an official avatar the Gaussians are the map
    points themselves; the built-in avatar samples its Gaussians over the mesh instead."""

    joints_rest: Float[Array, "J 3"]
    inv_cano_transforms: Float[Array, "J 4 4"]
    betas: Float[Array, " B"]
    input_points: Float[Array, "Q 3"]
    input_weights: Float[Array, "Q J"]
    input_pixels: Int[Array, " Q"]
    view_points: Float[Array, "R 3"]
    view_normals: Float[Array, "R 3"]
    view_weights: Float[Array, "R J"]
    view_pixels: Int[Array, " R"]
    gaussian_pixels: Int[Array, " N"]
    cano_means: Float[Array, "N 3"]
    gaussian_weights: Float[Array, "N J"]
    base_log_scales: Float[Array, "N 3"]
    base_opacity_logits: Float[Array, " N"]
    base_quats: Float[Array, "N 4"]
    base_colors: Float[Array, "N 3"]
    map_size: int = eqx.field(static=True)
    parents: tuple[int, ...] = eqx.field(static=True)

    @property
    def num_gaussians(self) -> int:
        return self.cano_means.shape[0]

    # The array fields, in the order avatar files store them (`template.<name>`).
    ARRAY_FIELDS = (
        "joints_rest", "inv_cano_transforms", "betas", "input_points", "input_weights", "input_pixels",
        "view_points", "view_normals", "view_weights", "view_pixels", "gaussian_pixels", "cano_means",
        "gaussian_weights", "base_log_scales", "base_opacity_logits", "base_quats", "base_colors",
    )  # fmt: skip


def canonical_inverse_transforms(joints_rest: np.ndarray, parents: tuple[int, ...]) -> np.ndarray:
    """A_cano^-1 for every joint (float64 inverse of the canonical-pose transforms)."""
    pose = full_pose(jnp.asarray(CANONICAL_BODY_POSE.reshape(-1), jnp.float32))
    _, a_cano = jax.jit(joint_transforms, static_argnums=2)(
        pose, jnp.asarray(joints_rest, jnp.float32), parents
    )
    return np.linalg.inv(np.asarray(a_cano, np.float64)).astype(np.float32)


def make_template(
    *,
    map_size: int,
    map_points: np.ndarray,
    map_normals: np.ndarray,
    map_weights: np.ndarray,
    map_rows: np.ndarray,
    map_cols: np.ndarray,
    gaussian_means: np.ndarray,
    gaussian_weights: np.ndarray,
    gaussian_rows: np.ndarray,
    gaussian_cols: np.ndarray,
    base_log_scales: np.ndarray,
    base_opacity_logits: np.ndarray,
    base_quats: np.ndarray,
    base_colors: np.ndarray,
    joints_rest: np.ndarray,
    parents: tuple[int, ...],
    betas: np.ndarray,
) -> AvatarTemplate:
    """Assemble a template from canonical map points (pixel (row, col) of the (S, 2S) map,
    col >= S is the back half) and canonical Gaussians."""
    s = int(map_size)
    if s % 2:
        raise ValueError(f"map_size must be even, got {s}")
    rows, cols = np.asarray(map_rows), np.asarray(map_cols)
    even = (rows % 2 == 0) & (cols % 2 == 0)
    inp = even & (cols < s)
    f32 = np.float32

    def arr(x, dtype=f32):
        return jnp.asarray(np.asarray(x, dtype))

    return AvatarTemplate(
        joints_rest=arr(joints_rest),
        inv_cano_transforms=arr(canonical_inverse_transforms(np.asarray(joints_rest, f32), tuple(parents))),
        betas=arr(betas),
        input_points=arr(map_points[inp]),
        input_weights=arr(map_weights[inp]),
        input_pixels=arr((rows[inp] // 2) * (s // 2) + cols[inp] // 2, np.int32),
        view_points=arr(map_points[even]),
        view_normals=arr(map_normals[even]),
        view_weights=arr(map_weights[even]),
        view_pixels=arr((rows[even] // 2) * s + cols[even] // 2, np.int32),
        gaussian_pixels=arr(np.asarray(gaussian_rows) * (2 * s) + np.asarray(gaussian_cols), np.int32),
        cano_means=arr(gaussian_means),
        gaussian_weights=arr(gaussian_weights),
        base_log_scales=arr(base_log_scales),
        base_opacity_logits=arr(base_opacity_logits),
        base_quats=arr(base_quats),
        base_colors=arr(base_colors),
        map_size=s,
        parents=tuple(int(p) for p in parents),
    )


class AvatarAux(eqx.Module):
    """What a fitting loss may want besides the Gaussians."""

    joints: Float[Array, "J 3"]
    """Posed SMPL-X joints in world coordinates (the 55 of the kinematic tree)."""
    joint_transforms: Float[Array, "J 4 4"]
    """World transforms A_j (rest -> posed, with phi and r), as the body model's."""
    offsets: Float[Array, "N 3"]
    """Non-rigid canonical offsets of the Gaussians (0.05 x position net)."""
    pose_map: Float[Array, "h w 3"]
    """The network input (posed front position map at half resolution)."""


NETWORKS = ("position", "other", "color")
"""The pose-driven networks, by the `AvatarMaps` field each fills: offsets, others, colors."""


class AvatarMaps(eqx.Module):
    """What the pose-driven networks give each Gaussian (steps 2-4 of the forward): everything of
    the avatar that depends on the pose through a network rather than through skinning."""

    offsets: Float[Array, "N 3"] | None
    """Canonical position offsets (0.05 x position net)."""
    others: Float[Array, "N 8"] | None
    """Opacity, log-scale (3) and quaternion (4) deltas of the other net."""
    colors: Float[Array, "N 3"] | None
    """RGB colours (colour net + base colours)."""

    def replace(self, other: AvatarMaps) -> AvatarMaps:
        """These maps with every field `other` has (not None) taken from it."""
        pick = lambda mine, theirs: mine if theirs is None else theirs  # noqa: E731
        return AvatarMaps(pick(self.offsets, other.offsets), pick(self.others, other.others),
                          pick(self.colors, other.colors))


PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _run_network(net, *inputs, dtype: str = "float32"):
    """`net(*inputs)`, in `dtype` (weights and activations), its outputs in float32. A network's
    float32 weights are cast inside the call, so gradients reach them in float32."""
    if dtype == "float32":
        return net(*inputs)
    if dtype not in PRECISIONS:
        raise ValueError(f"network dtype must be one of {sorted(PRECISIONS)}, got {dtype!r}")
    low = PRECISIONS[dtype]
    cast = lambda x: x.astype(low) if eqx.is_inexact_array(x) else x  # noqa: E731
    outputs = jax.tree.map(cast, net)(*jax.tree.map(cast, inputs))
    return jax.tree.map(lambda y: y.astype(jnp.float32), outputs)


class AnimatableAvatar(eqx.Module):
    """Animatable Gaussians avatar: body pose + camera position -> world-space `Gaussians`.

    Call: `avatar(global_orient (3,), body_pose (63,), transl (3,), camera_position (3,),
    *, jaw_pose=None, left_hand_pose=None, right_hand_pose=None, return_aux=False)`.

    Colours become degree-0 SH (`rgb_to_sh0`), so the renderer shows max(colour, 0); the
    official rasterizer takes the raw network colour (negative values are rare and darken)."""

    position_net: DualStyleUNet
    other_net: DualStyleUNet
    color_net: DualStyleUNet
    viewdir_net: ViewDirNet | None
    template: AvatarTemplate
    color_order: str = eqx.field(static=True, default="rgb")
    """'bgr' for official avatars (trained on OpenCV images); output colours are always RGB."""
    weight_viewdirs: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        s = self.template.map_size
        for name in ("position_net", "other_net", "color_net"):
            c = getattr(self, name).config
            if c.out_size != s or c.inp_size != s // 2:
                raise ValueError(
                    f"AnimatableAvatar.{name} maps {c.inp_size} -> {c.out_size} px but the template's maps "
                    f"need {s // 2} -> {s}"
                )
        if (
            self.other_net.config.out_ch != 8
            or self.position_net.config.out_ch != 3
            or self.color_net.config.out_ch != 3
        ):
            raise ValueError(
                "AnimatableAvatar needs position_net (3 out), other_net (8 out), color_net (3 out)"
            )

    # ------------------------------------------------------------------ pieces of the forward
    def skeleton(
        self, global_orient, body_pose, transl, *, jaw_pose=None, left_hand_pose=None, right_hand_pose=None
    ) -> tuple[
        Float[Array, "J 3"],
        Float[Array, "J 4 4"],
        Float[Array, "J 4 4"],
        Float[Array, "3 3"],
        Float[Array, "3"],
    ]:
        """(world joints, world transforms A, canonical-to-live transforms without the root,
        root rotation, root translation)."""
        t = self.template
        pose = full_pose(body_pose, jaw_pose, left_hand_pose, right_hand_pose)
        joints_wo, a_wo = joint_transforms(pose, t.joints_rest, t.parents)
        rot, trans = root_transform(global_orient, transl, t.joints_rest[0])
        world = rigid(rot, trans)
        return joints_wo @ rot.T + trans, world @ a_wo, a_wo @ t.inv_cano_transforms, rot, trans

    def pose_map(self, cano2live: Float[Array, "J 4 4"]) -> Float[Array, "h h 3"]:
        t = self.template
        half = t.map_size // 2
        live = apply_blended(blend_transforms(t.input_weights, cano2live), t.input_points)
        flat = jnp.zeros((half * half, 3), live.dtype).at[t.input_pixels].set(live, unique_indices=True)
        return flat.reshape(half, half, 3)

    def view_maps(self, cano2live, root_rot, root_trans, camera_position) -> tuple[Array, Array]:
        """Front and back maps of dot(posed normal, unit direction to the camera)."""
        t = self.template
        half = t.map_size // 2
        mats = blend_transforms(t.view_weights, cano2live)
        pts = apply_blended(mats, t.view_points) @ root_rot.T + root_trans
        nml = jnp.einsum("nab,nb->na", mats[:, :, :3], t.view_normals) @ root_rot.T
        to_cam = camera_position - pts
        to_cam = to_cam / jnp.maximum(jnp.linalg.norm(to_cam, axis=-1, keepdims=True), NORMALIZE_EPS)
        cos = jnp.sum(nml * to_cam, axis=-1)
        flat = jnp.zeros((half * t.map_size,), cos.dtype).at[t.view_pixels].set(cos, unique_indices=True)
        view = jax.lax.stop_gradient(flat.reshape(half, t.map_size, 1))
        return view[:, :half], view[:, half:]

    def gather(self, front: Array, back: Array) -> Array:
        maps = jnp.concatenate([front, back], axis=1)
        return maps.reshape(-1, maps.shape[-1])[self.template.gaussian_pixels]

    # ------------------------------------------------------------------ the map of equation 6
    def network_maps(
        self,
        global_orient: Float[Array, "3"],
        body_pose: Float[Array, "63"],
        transl: Float[Array, "3"],
        camera_position: Float[Array, "3"],
        *,
        jaw_pose: Float[Array, "3"] | None = None,
        left_hand_pose: Float[Array, "45"] | None = None,
        right_hand_pose: Float[Array, "45"] | None = None,
        nets: tuple[str, ...] = NETWORKS,
        dtype: str = "float32",
    ) -> AvatarMaps:
        """Steps 1-4: what the pose-driven networks give each Gaussian. `nets` picks the networks
        evaluated (the others' fields come back None, for a caller that holds them from an earlier
        pose); `dtype` 'bfloat16' runs them with bfloat16 weights and activations (float32 out)."""
        t = self.template
        _, _, cano2live, root_rot, root_trans = self.skeleton(
            global_orient, body_pose, transl, jaw_pose=jaw_pose,
            left_hand_pose=left_hand_pose, right_hand_pose=right_hand_pose,
        )  # fmt: skip
        if left_hand_pose is None and right_hand_pose is None:
            pose_map = self.pose_map(cano2live)
        else:
            # The official pose maps are made without the hands (gen_pos_maps.py leaves them
            # flat); the hands move the Gaussians and the view maps' normals only.
            pose_map = self.pose_map(self.skeleton(global_orient, body_pose, transl, jaw_pose=jaw_pose)[2])
        run = functools.partial(_run_network, dtype=dtype)
        offsets = others = colors = None
        if "position" in nets:
            offsets = POSITION_SCALE * self.gather(*run(self.position_net, pose_map))
        if "other" in nets:
            others = self.gather(*run(self.other_net, pose_map))
        if "color" in nets:
            if self.viewdir_net is not None:
                view_front, view_back = self.view_maps(cano2live, root_rot, root_trans, camera_position)
                feat_front = self.weight_viewdirs * self.viewdir_net(view_front)
                feat_back = self.weight_viewdirs * self.viewdir_net(view_back)
            else:
                feat_front = feat_back = None
            colors = self.gather(*run(self.color_net, pose_map, feat_front, feat_back))
            if self.color_order == "bgr":
                colors = colors[:, ::-1]
            colors = colors + t.base_colors
        return AvatarMaps(offsets, others, colors)

    def pose_gaussians(
        self,
        maps: AvatarMaps,
        global_orient: Float[Array, "3"],
        body_pose: Float[Array, "63"],
        transl: Float[Array, "3"],
        *,
        jaw_pose: Float[Array, "3"] | None = None,
        left_hand_pose: Float[Array, "45"] | None = None,
        right_hand_pose: Float[Array, "45"] | None = None,
    ) -> Gaussians:
        """Step 5: the canonical Gaussians with the networks' `maps`, skinned by the pose and moved
        by the root transform. Only this runs between network refreshes in an amortised fit, so
        the pose gradient then flows through the skinning alone."""
        t = self.template
        cano2live, root_rot, root_trans = self.skeleton(
            global_orient, body_pose, transl, jaw_pose=jaw_pose,
            left_hand_pose=left_hand_pose, right_hand_pose=right_hand_pose,
        )[2:]  # fmt: skip
        cano = t.cano_means + maps.offsets
        quats = maps.others[:, 4:8] + t.base_quats
        quats = quats / jnp.maximum(jnp.linalg.norm(quats, axis=-1, keepdims=True), 1e-12)
        mats = blend_transforms(t.gaussian_weights, cano2live)
        means = apply_blended(mats, cano) @ root_rot.T + root_trans
        rotations = root_rot @ mats[:, :, :3] @ quaternion_to_matrix(quats)
        return Gaussians(
            means=means,
            quats=matrix_to_quaternion(rotations),
            log_scales=maps.others[:, 1:4] + t.base_log_scales,
            opacity_logits=maps.others[:, 0] + t.base_opacity_logits,
            sh=rgb_to_sh0(maps.colors)[:, None, :],
        )

    def __call__(
        self,
        global_orient: Float[Array, "3"],
        body_pose: Float[Array, "63"],
        transl: Float[Array, "3"],
        camera_position: Float[Array, "3"],
        *,
        jaw_pose: Float[Array, "3"] | None = None,
        left_hand_pose: Float[Array, "45"] | None = None,
        right_hand_pose: Float[Array, "45"] | None = None,
        return_aux: bool = False,
        dtype: str = "float32",
    ) -> Gaussians | tuple[Gaussians, AvatarAux]:
        hands = {"left_hand_pose": left_hand_pose, "right_hand_pose": right_hand_pose}
        maps = self.network_maps(global_orient, body_pose, transl, camera_position, jaw_pose=jaw_pose, dtype=dtype,
                                 **hands)
        gaussians = self.pose_gaussians(maps, global_orient, body_pose, transl, jaw_pose=jaw_pose, **hands)
        if not return_aux:
            return gaussians
        joints, world_a = self.skeleton(global_orient, body_pose, transl, jaw_pose=jaw_pose, **hands)[:2]
        hands_flat = self.skeleton(global_orient, body_pose, transl, jaw_pose=jaw_pose)[2]
        return gaussians, AvatarAux(
            joints=joints, joint_transforms=world_a, offsets=maps.offsets, pose_map=self.pose_map(hands_flat)
        )

    # ------------------------------------------------------------------ parameter groups
    def color_filter(self, include_viewdir: bool = False):
        """A pytree of bools, True on the colour net's trainable arrays (the fixed noise maps
        excluded): `eqx.partition(avatar, avatar.color_filter())` splits off what the pipeline
        fine-tunes. `include_viewdir` adds the view-direction net."""
        mask = jax.tree.map(lambda _: False, self)

        def trainable(net):
            m = jax.tree.map(eqx.is_inexact_array, net)
            return eqx.tree_at(lambda n: n.noises, m, [False] * len(net.noises))

        mask = eqx.tree_at(lambda a: a.color_net, mask, trainable(self.color_net))
        if include_viewdir and self.viewdir_net is not None:
            mask = eqx.tree_at(
                lambda a: a.viewdir_net, mask, jax.tree.map(eqx.is_inexact_array, self.viewdir_net)
            )
        return mask

    def network_filter(self):
        """True on every trainable network array (all four nets, noise maps excluded)."""
        mask = jax.tree.map(lambda _: False, self)
        for name in ("position_net", "other_net", "color_net"):
            net = getattr(self, name)
            m = jax.tree.map(eqx.is_inexact_array, net)
            m = eqx.tree_at(lambda n: n.noises, m, [False] * len(net.noises))
            mask = eqx.tree_at(lambda a, name=name: getattr(a, name), mask, m)
        if self.viewdir_net is not None:
            mask = eqx.tree_at(
                lambda a: a.viewdir_net, mask, jax.tree.map(eqx.is_inexact_array, self.viewdir_net)
            )
        return mask

    @property
    def num_gaussians(self) -> int:
        return self.template.num_gaussians
