"""Gaussians as a web viewer draws them: centres, covariances, RGB and opacities (numpy).

A browser splat renderer takes view-independent colour, so only the degree-0 spherical-harmonic
term is shown. Display subsets are drawn with a fixed seed and nested (a larger subset contains
the smaller), so moving the count control only adds or removes splats.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from jaxtyping import Float

from ..splat.gaussians import SH_C0


@dataclasses.dataclass(frozen=True)
class SplatArrays:
    """N splats; leading axes (e.g. frames) allowed before N."""

    centers: Float[np.ndarray, "*b N 3"]
    covariances: Float[np.ndarray, "*b N 3 3"]
    rgbs: Float[np.ndarray, "*b N 3"]
    opacities: Float[np.ndarray, "*b N 1"]

    @property
    def count(self) -> int:
        return int(self.centers.shape[-2])

    def take(self, index: np.ndarray) -> SplatArrays:
        """The splats `index` (along N) of every leading entry."""
        return SplatArrays(np.take(self.centers, index, axis=-2), np.take(self.covariances, index, axis=-3),
                           np.take(self.rgbs, index, axis=-2), np.take(self.opacities, index, axis=-2))

    def frame(self, t: int) -> SplatArrays:
        return SplatArrays(self.centers[t], self.covariances[t], self.rgbs[t], self.opacities[t])


def splat_arrays(gaussians) -> SplatArrays:
    """Display arrays of a `zerohsi_jax.splat.Gaussians` (any leading axes): Sigma = R S S R^T with
    the activations the rasterizer applies (exp scales, normalised quaternions, sigmoid opacity)."""
    means = np.asarray(gaussians.means, np.float32)
    # float32 throughout: a display needs no more, and a scene of millions stays a few hundred MB.
    quats = np.asarray(gaussians.quats, np.float32)
    quats = quats / np.maximum(np.linalg.norm(quats, axis=-1, keepdims=True), 1e-12)
    w, x, y, z = np.moveaxis(quats, -1, 0)
    rot = np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)  # fmt: skip
    scales = np.exp(np.asarray(gaussians.log_scales, np.float32))
    m = rot * scales[..., None, :]
    cov = (m @ np.swapaxes(m, -1, -2)).astype(np.float32)
    rgb = np.clip(SH_C0 * np.asarray(gaussians.sh, np.float32)[..., 0, :] + 0.5, 0.0, 1.0)
    opacity = 1.0 / (1.0 + np.exp(-np.asarray(gaussians.opacity_logits, np.float32)))
    return SplatArrays(means, cov, rgb.astype(np.float32), opacity[..., None].astype(np.float32))


def display_order(count: int, seed: int = 0) -> np.ndarray:
    """A fixed random order of `count` splats: its first n are the display subset of size n."""
    return np.random.default_rng(seed).permutation(count)


def subset(arrays: SplatArrays, n: int, seed: int = 0) -> SplatArrays:
    """The nested display subset of `n` splats (all when n >= count)."""
    if n >= arrays.count:
        return arrays
    return arrays.take(np.sort(display_order(arrays.count, seed)[: max(int(n), 0)]))


__all__ = ["SplatArrays", "display_order", "splat_arrays", "subset"]
