"""The `Gaussians` pytree: a set of 3D Gaussians with spherical-harmonic colour."""

from __future__ import annotations

from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from ..geometry import matrix_to_quaternion, quaternion_multiply

# Real spherical-harmonic basis constants (degree 0 to 3), the values the INRIA 3DGS code uses.
SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)


def sh_degree_of(num_coeffs: int) -> int:
    degree = {1: 0, 4: 1, 9: 2, 16: 3}.get(int(num_coeffs))
    if degree is None:
        raise ValueError(f"SH coefficient count must be 1, 4, 9 or 16 (degree 0 to 3), got {num_coeffs}")
    return degree


def rgb_to_sh0(rgb):
    """The degree-0 coefficient whose colour is `rgb` (inverse of `max(0.5 + C0 * sh0, 0)`)."""
    return (rgb - 0.5) / SH_C0


class Gaussians(eqx.Module):
    """N Gaussians. Activations are applied at render time: exp(log_scales), sigmoid(opacity_logits),
    normalised quaternions (w, x, y, z) and colour max(SH(dir) + 0.5, 0), as in the INRIA code."""

    means: Float[Array, "N 3"]
    quats: Float[Array, "N 4"]
    log_scales: Float[Array, "N 3"]
    opacity_logits: Float[Array, " N"]
    sh: Float[Array, "N K 3"]
    features: Float[Array, "N E"] | None = None
    groups: Int[Array, " N"] | None = None

    def __check_init__(self):
        # Leading axes are allowed (a stack of sets, one per seed); trailing axes must match.
        lead = tuple(self.means.shape[:-1])
        expected = {
            "means": (self.means.shape, lead + (3,)),
            "quats": (self.quats.shape, lead + (4,)),
            "log_scales": (self.log_scales.shape, lead + (3,)),
            "opacity_logits": (self.opacity_logits.shape, lead),
        }
        if self.features is not None:
            expected["features"] = (self.features.shape[:-1], lead)
        if self.groups is not None:
            expected["groups"] = (self.groups.shape, lead)
        for name, (got, want) in expected.items():
            if tuple(got) != want:
                raise ValueError(f"Gaussians.{name} has shape {tuple(got)}, expected {want}")
        if tuple(self.sh.shape[:-2]) != lead or self.sh.shape[-1] != 3:
            raise ValueError(f"Gaussians.sh has shape {tuple(self.sh.shape)}, expected {lead + ('K', 3)}")
        sh_degree_of(self.sh.shape[-2])

    @property
    def num(self) -> int:
        return self.means.shape[-2]

    @property
    def sh_degree(self) -> int:
        return sh_degree_of(self.sh.shape[-2])

    @property
    def scales(self):
        return jnp.exp(self.log_scales)

    @property
    def opacities(self):
        return jax.nn.sigmoid(self.opacity_logits)

    def colors(self, camera_position: Float[Array, "3"]) -> Float[Array, "N 3"]:
        """View-dependent RGB seen from `camera_position` (world coordinates)."""
        return eval_sh_colors(self.sh, self.means - camera_position)

    def with_group(self, group_id: int) -> Gaussians:
        return eqx.tree_at(
            lambda g: g.groups,
            self,
            jnp.full((self.num,), group_id, jnp.int32),
            is_leaf=lambda x: x is None,
        )

    @staticmethod
    def concatenate(sets: Sequence[Gaussians]) -> Gaussians:
        """Concatenate sets (human + object + scene). SH is padded to the highest degree; a set
        without `features` gets zeros; a set without `groups` gets its position in `sets`."""
        if not sets:
            raise ValueError("concatenate needs at least one Gaussian set")
        k = max(g.sh.shape[1] for g in sets)
        widths = {g.features.shape[1] for g in sets if g.features is not None}
        if len(widths) > 1:
            raise ValueError(f"feature widths differ between sets: {sorted(widths)}")
        e = widths.pop() if widths else None
        sh, feats, groups = [], [], []
        for i, g in enumerate(sets):
            sh.append(jnp.pad(g.sh, ((0, 0), (0, k - g.sh.shape[1]), (0, 0))))
            if e is not None:
                feats.append(g.features if g.features is not None else jnp.zeros((g.num, e), g.means.dtype))
            groups.append(g.groups if g.groups is not None else jnp.full((g.num,), i, jnp.int32))
        return Gaussians(
            means=jnp.concatenate([g.means for g in sets]),
            quats=jnp.concatenate([g.quats for g in sets]),
            log_scales=jnp.concatenate([g.log_scales for g in sets]),
            opacity_logits=jnp.concatenate([g.opacity_logits for g in sets]),
            sh=jnp.concatenate(sh),
            features=None if e is None else jnp.concatenate(feats),
            groups=jnp.concatenate(groups),
        )

    def transform(self, rotation: Float[Array, "3 3"], translation: Float[Array, "3"]) -> Gaussians:
        """Rigidly move the set: x -> R x + t, orientations rotated with it (SH left as is)."""
        q = matrix_to_quaternion(rotation)
        return eqx.tree_at(
            lambda g: (g.means, g.quats),
            self,
            (self.means @ rotation.T + translation, quaternion_multiply(q[None], self.quats)),
        )


def random_gaussians(
    key,
    num: int,
    *,
    center=(0.0, 0.0, 3.0),
    spread: float = 1.0,
    scale_range=(-4.0, -2.0),
    sh_degree: int = 0,
    num_features: int = 0,
    dtype=jnp.float32,
) -> Gaussians:
    """Random Gaussians in a cube around `center` (tests and benchmarks)."""
    keys = jax.random.split(key, 6)
    k = (sh_degree + 1) ** 2
    means = jnp.asarray(center, dtype) + spread * jax.random.uniform(keys[0], (num, 3), dtype, -1.0, 1.0)
    quats = jax.random.normal(keys[1], (num, 4), dtype)
    log_scales = jax.random.uniform(keys[2], (num, 3), dtype, *scale_range)
    opacity_logits = jax.random.normal(keys[3], (num,), dtype)
    sh = 0.5 * jax.random.normal(keys[4], (num, k, 3), dtype)
    features = jax.random.uniform(keys[5], (num, num_features), dtype) if num_features else None
    return Gaussians(means, quats, log_scales, opacity_logits, sh, features)


def eval_sh_colors(sh: Float[Array, "N K 3"], directions: Float[Array, "N 3"]) -> Float[Array, "N 3"]:
    """Colour max(sum_k sh_k Y_k(dir) + 0.5, 0) for degree 0 to 3."""
    degree = sh_degree_of(sh.shape[1])
    result = SH_C0 * sh[:, 0]
    if degree > 0:
        d = directions / jnp.sqrt(jnp.sum(directions**2, axis=-1, keepdims=True) + 1e-20)
        x, y, z = d[:, 0:1], d[:, 1:2], d[:, 2:3]
        result = result - SH_C1 * y * sh[:, 1] + SH_C1 * z * sh[:, 2] - SH_C1 * x * sh[:, 3]
        if degree > 1:
            xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
            result = (
                result
                + SH_C2[0] * xy * sh[:, 4]
                + SH_C2[1] * yz * sh[:, 5]
                + SH_C2[2] * (2.0 * zz - xx - yy) * sh[:, 6]
                + SH_C2[3] * xz * sh[:, 7]
                + SH_C2[4] * (xx - yy) * sh[:, 8]
            )
            if degree > 2:
                result = (
                    result
                    + SH_C3[0] * y * (3.0 * xx - yy) * sh[:, 9]
                    + SH_C3[1] * xy * z * sh[:, 10]
                    + SH_C3[2] * y * (4.0 * zz - xx - yy) * sh[:, 11]
                    + SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[:, 12]
                    + SH_C3[4] * x * (4.0 * zz - xx - yy) * sh[:, 13]
                    + SH_C3[5] * z * (xx - yy) * sh[:, 14]
                    + SH_C3[6] * x * (xx - 3.0 * yy) * sh[:, 15]
                )
    return jnp.maximum(result + 0.5, 0.0)


def as_numpy_gaussians(g: Gaussians) -> dict[str, np.ndarray]:
    """Plain numpy arrays of every field that is set (for writing and reference renderers)."""
    out = {name: np.asarray(getattr(g, name)) for name in ("means", "quats", "log_scales", "opacity_logits", "sh")}
    if g.features is not None:
        out["features"] = np.asarray(g.features)
    if g.groups is not None:
        out["groups"] = np.asarray(g.groups)
    return out
