"""Every loss of the paper, one named function each, and the weighted sums the stages minimise.

Equation numbers refer to Li, Yu, Li, Wu, "ZeroHSI" (2025). Images are (H, W, 3) in [0, 1],
masks (H, W) in [0, 1]. All functions are pure and differentiable.

A stage's objective is an `Objective`: its term table (a name -> a function of the stage's
context) and the weights of the run config, together, computing `weighted_sum`. A user adds a
term by putting a function in the stage's term table (`HSI_TERMS`, `CAMERA_TERMS`,
`REFINE_TERMS`, or a copy passed to the stage) and a weight in the config: no optimiser code
changes. See experiments/custom_loss.py.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

# ----------------------------------------------------------------------------- photometric terms


def l1_loss(rendered: Float[Array, "H W C"], target: Float[Array, "H W C"]) -> Float[Array, ""]:
    return jnp.mean(jnp.abs(rendered - target))


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """The normalised 1D Gaussian of the 3DGS ssim (a constant of the program, symmetric)."""
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    w = np.exp(-(x**2) / (2 * sigma**2))
    return (w / w.sum()).astype(np.float32)


def _blur_axis(img: Float[Array, "H W C"], window: np.ndarray, axis: int) -> Float[Array, "H W C"]:
    """'Same'-size correlation with `window` along `axis` (0 or 1), zero padding, as a sum of
    shifted copies: one fused elementwise pass."""
    k, n = len(window), img.shape[axis]
    pad = [(0, 0)] * img.ndim
    pad[axis] = (k // 2, k // 2)
    padded = jnp.pad(img, pad)
    taps = (float(w) * jax.lax.slice_in_dim(padded, i, i + n, axis=axis) for i, w in enumerate(window))
    return functools.reduce(jnp.add, taps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _separable_blur(img, size: int, sigma: float):
    w = gaussian_window(size, sigma)
    return _blur_axis(_blur_axis(img, w, 0), w, 1)


def _separable_blur_fwd(img, size, sigma):
    return _separable_blur(img, size, sigma), None


def _separable_blur_bwd(size, sigma, _, grad):
    # The blur is linear and its window symmetric, so it is its own adjoint (zero padding included).
    return (_separable_blur(grad, size, sigma),)


_separable_blur.defvjp(_separable_blur_fwd, _separable_blur_bwd)


def gaussian_blur_shifted(img: Float[Array, "H W C"], size: int = 11, sigma: float = 1.5) -> Float[Array, "H W C"]:
    """The separable Gaussian filter as shifted sums, the blur being its own backward: what
    `gaussian_blur` runs on the CPU."""
    return _separable_blur(img, size, sigma)


def gaussian_blur(img: Float[Array, "H W C"], size: int = 11, sigma: float = 1.5) -> Float[Array, "H W C"]:
    """Separable Gaussian filter with zero padding ('same' size), as the 3DGS ssim does.

    On the CPU as shifted sums (`gaussian_blur_shifted`): XLA's CPU convolutions took 60x longer for
    these single-channel filters (64x64x15 forward: 10 ms against 0.16 ms; 1280x720: 1.6 s against
    0.13 s), a third of an HSI iteration at the demo's size. Elsewhere as two convolutions
    (`gaussian_blur_conv`, also the reference twin), which GPU libraries run well and which
    XLA's cost analysis counts as the work they are (it counts every shifted read in full)."""
    return jax.lax.platform_dependent(img, cpu=lambda x: gaussian_blur_shifted(x, size, sigma),
                                      default=lambda x: gaussian_blur_conv(x, size, sigma))


def gaussian_blur_conv(img: Float[Array, "H W C"], size: int = 11, sigma: float = 1.5) -> Float[Array, "H W C"]:
    """The reference twin of `gaussian_blur`: two convolutions under plain autodiff."""
    w = jnp.asarray(gaussian_window(size, sigma), img.dtype)
    x = jnp.moveaxis(img, -1, 0)[:, None]  # (C, 1, H, W)
    pad = size // 2
    x = jax.lax.conv_general_dilated(x, w.reshape(1, 1, size, 1), (1, 1), ((pad, pad), (0, 0)))
    x = jax.lax.conv_general_dilated(x, w.reshape(1, 1, 1, size), (1, 1), ((0, 0), (pad, pad)))
    return jnp.moveaxis(x[:, 0], 0, -1)


def ssim(rendered: Float[Array, "H W C"], target: Float[Array, "H W C"], window_size: int = 11,
         sigma: float = 1.5, c1: float = 0.01**2, c2: float = 0.03**2, blur=gaussian_blur) -> Float[Array, ""]:
    """Mean structural similarity with an 11x11 Gaussian window (sigma 1.5), the 3DGS variant.
    The rendered image's three blurred statistics are one blur of their stack; the target's two
    another (constant in a fit)."""
    c = rendered.shape[-1]
    moving = blur(jnp.concatenate([rendered, rendered * rendered, rendered * target], -1), window_size, sigma)
    fixed = blur(jnp.concatenate([target, target * target], -1), window_size, sigma)
    mu_x, xx, xy = moving[..., :c], moving[..., c:2 * c], moving[..., 2 * c:]
    mu_y, yy = fixed[..., :c], fixed[..., c:]
    sxx, syy, sxy = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return jnp.mean(num / den)


def dssim_loss(rendered, target, blur=gaussian_blur) -> Float[Array, ""]:
    """D-SSIM as the 3DGS code (which ZeroHSI builds on) uses it: 1 - SSIM."""
    return 1.0 - ssim(rendered, target, blur=blur)


def rgb_loss(rendered, target, ssim_weight: float = 0.1, blur=gaussian_blur) -> Float[Array, ""]:
    """Eq. 10: L_rgb = (1 - lambda) L1 + lambda L_D-SSIM."""
    return (1.0 - ssim_weight) * l1_loss(rendered, target) + ssim_weight * dssim_loss(rendered, target, blur)


# ------------------------------------------------------------------------------- camera tracking


def static_background_masks(human_masks: Float[Array, "*S T H W"], object_masks: Float[Array, "*S T H W"]
                            ) -> Float[Array, "*S T H W"]:
    """Eq. 8: M_t = 1 - union_{i<=t} (M_H^i | M_O^i), for every t at once (a running maximum over
    time, the third axis from the end; leading axes such as seeds are independent videos)."""
    if human_masks.ndim < 3 or human_masks.shape != object_masks.shape:
        raise ValueError(f"masks must be (..., T, H, W) and alike, got {human_masks.shape} and {object_masks.shape}")
    dynamic = jnp.maximum(human_masks, object_masks)
    return 1.0 - jax.lax.cummax(dynamic, axis=dynamic.ndim - 3)


def masked_photometric_loss(rendered, target, mask: Float[Array, "H W"], kind: str = "l2") -> Float[Array, ""]:
    """Eq. 7: the camera-tracking loss between R(G_S(T); T_{t-1}) . M_t and I_t . M_t (mean over
    the masked pixels). Algorithm 1 of the paper names it L2; 'l1' is available."""
    diff = (rendered - target) * mask[..., None]
    err = diff**2 if kind == "l2" else jnp.abs(diff)
    return jnp.sum(err) / (3.0 * jnp.maximum(jnp.sum(mask), 1.0))


# ----------------------------------------------------------------------------- object pose terms


def mask_centroid(mask: Float[Array, "H W"]) -> Float[Array, "2"]:
    """Centre of a (soft) mask as (x, y) normalised to [0, 1] by the image width and height."""
    h, w = mask.shape
    total = jnp.maximum(jnp.sum(mask), 1e-6)
    ys = (jnp.arange(h, dtype=mask.dtype) + 0.5) / h
    xs = (jnp.arange(w, dtype=mask.dtype) + 0.5) / w
    return jnp.stack([jnp.sum(mask * xs[None, :]) / total, jnp.sum(mask * ys[:, None]) / total])


def l2_distance(diff: Float[Array, "*b D"], kind: str = "squared") -> Float[Array, "*b"]:
    """The paper's "L2" of a difference vector: its squared Euclidean norm ('squared', the default
    reading of eqs. 11, 13 and 15) or the norm itself ('euclidean'). The paper does not say which."""
    sq = jnp.sum(diff**2, axis=-1)
    if kind == "squared":
        return sq
    if kind == "euclidean":
        return jnp.sqrt(sq + 1e-12)
    raise ValueError(f"L2 kind must be 'squared' or 'euclidean', got {kind!r}")


def object_center_loss(rendered_object_mask, object_mask, kind: str = "squared") -> Float[Array, ""]:
    """Eq. 11: L_center = L2(C_hat_O^t, C_O^t), centroids of the rendered object region and of the
    segmented object mask. An empty segmentation contributes nothing."""
    present = (jnp.sum(object_mask) > 0.5).astype(object_mask.dtype)
    d = mask_centroid(rendered_object_mask) - mask_centroid(object_mask)
    return present * l2_distance(d, kind)


def mean_masked_depth(depth: Float[Array, "H W"], mask: Float[Array, "H W"]) -> Float[Array, ""]:
    """Eq. 12: D_O = sum(D . M_O) / sum(M_O)."""
    return jnp.sum(depth * mask) / jnp.maximum(jnp.sum(mask), 1e-6)


def object_depth_loss(depth, rendered_object_mask, reference_depth, kind: str = "squared") -> Float[Array, ""]:
    """Eq. 13: L_depth = L2(D_hat_O^t, D_O^0), the mean rendered depth of the object region against
    the mean object depth of frame 0."""
    present = (jnp.sum(rendered_object_mask) > 0.5).astype(depth.dtype)
    d = mean_masked_depth(depth, rendered_object_mask) - reference_depth
    return present * l2_distance(d[None], kind)


# ---------------------------------------------------------------------------------- refinement


def joint_fit_loss(reference_joints: Float[Array, "J 3"], joints: Float[Array, "J 3"], kind: str = "squared"
                   ) -> Float[Array, ""]:
    """Eq. 15: L_fit^t = L2(J_hat_t, J_t(r_t, phi_t, D(z_t))), averaged over the joints (of the
    squared distances by default; `kind` 'euclidean' averages the distances)."""
    return jnp.mean(l2_distance(reference_joints - joints, kind))


def hand_object_contact_loss_dense(hand_vertices: Float[Array, "V 3"], object_centers: Float[Array, "P 3"],
                                   epsilon: float, pair_scale: float = 1.0) -> Float[Array, ""]:
    """Eqs. S1-S2 with every pairwise distance held at once: the plain twin of
    `hand_object_contact_loss`, for tests and small sets. Memory grows as V x P."""
    d2 = jnp.sum((hand_vertices[:, None, :] - object_centers[None, :, :]) ** 2, axis=-1)
    in_contact = d2 < epsilon**2
    count = jnp.sum(in_contact) * pair_scale
    # sqrt at a masked minimum only: keeps the gradient finite when a pair coincides.
    nearest = jnp.sqrt(jnp.min(jnp.where(in_contact, d2, epsilon**2)) + 1e-12)
    return jnp.where(count > 0, nearest / jnp.maximum(count, 1e-12), 0.0)


def _nearest_contact_pair(hand_vertices, object_centers, epsilon: float, chunk: int):
    """(#C_t, hand index, object index) of the closest pair of C_t, searched over blocks of
    `chunk` object centres so that memory stays V x chunk. Integer results: no gradient."""
    hand = jax.lax.stop_gradient(hand_vertices)
    centers = jax.lax.stop_gradient(object_centers)
    p = centers.shape[0]
    chunk = max(1, min(int(chunk), p))
    blocks = -(-p // chunk)
    # Padding sits at infinity: never within epsilon of a vertex.
    padded = jnp.concatenate([centers, jnp.full((blocks * chunk - p, 3), jnp.inf, centers.dtype)])
    eps2 = jnp.asarray(epsilon, hand.dtype) ** 2

    def search(carry, block):
        count, best, best_hand, best_obj = carry
        points, offset = block
        d2 = jnp.sum((hand[:, None, :] - points[None, :, :]) ** 2, axis=-1)
        inside = d2 < eps2
        masked = jnp.where(inside, d2, jnp.inf)
        flat = jnp.argmin(masked)
        smallest = masked.reshape(-1)[flat]
        better = smallest < best
        return (count + jnp.sum(inside, dtype=jnp.int32), jnp.where(better, smallest, best),
                jnp.where(better, flat // chunk, best_hand), jnp.where(better, offset + flat % chunk, best_obj)), None

    init = (jnp.int32(0), jnp.asarray(jnp.inf, hand.dtype), jnp.int32(0), jnp.int32(0))
    offsets = jnp.arange(blocks, dtype=jnp.int32) * chunk
    (count, _, i, j), _ = jax.lax.scan(search, init, (padded.reshape(blocks, chunk, 3), offsets))
    return count, i, j


def hand_object_contact_loss(hand_vertices: Float[Array, "V 3"], object_centers: Float[Array, "P 3"],
                             epsilon: float, pair_scale: float = 1.0, chunk: int = 256) -> Float[Array, ""]:
    """Eqs. S1-S2: over the contact set C_t = {(v, mu): |v - mu| < epsilon} of all hand vertices and
    object centres, the smallest distance divided by #C_t; zero when the set is empty (the loss
    applies only when #C_t > 0).

    Exact over the full sets: the pairs are searched block by block (`chunk` centres at a time),
    and the gradient, which the minimum sends to its one pair only, is that pair's (to the
    vertex and the centre alike). When the sets
    given are subsamples, `pair_scale` (full pairs / subsampled pairs) scales the count back to
    the full sets' #C_t, so that the loss keeps the paper's scale."""
    count, i, j = _nearest_contact_pair(hand_vertices, object_centers, epsilon, chunk)
    d2 = jnp.sum((hand_vertices[i] - object_centers[j]) ** 2)
    nearest = jnp.sqrt(d2 + 1e-12)
    scaled = count.astype(nearest.dtype) * pair_scale
    return jnp.where(count > 0, nearest / jnp.maximum(scaled, 1e-12), 0.0)


def smoothness_loss(body_poses: Float[Array, "T 63"]) -> Float[Array, ""]:
    """Eq. S3: mean over adjacent frames of |Theta_t - Theta_{t+1}|_2."""
    d = body_poses[1:] - body_poses[:-1]
    return jnp.mean(jnp.sqrt(jnp.sum(d**2, axis=-1) + 1e-12))


def physics_loss(contact_per_frame: Float[Array, " T"], smoothness: Float[Array, ""], contact_weight: float,
                 smooth_weight: float) -> Float[Array, ""]:
    """Eq. S4: lambda_contact * mean_t L_contact^t + lambda_smooth * L_smooth."""
    return contact_weight * jnp.mean(contact_per_frame) + smooth_weight * smoothness


# --------------------------------------------------------------------------- weighted objectives

LossTerm = Callable[..., Float[Array, ""]]


def weighted_sum(terms: Mapping[str, LossTerm], weights: Mapping[str, float], context
                 ) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
    """sum_name weights[name] * terms[name](context); also returns each term's unweighted value
    (the NaN guard names a failing term from them). Terms with weight 0 are not evaluated."""
    unknown = sorted(set(weights) - set(terms))
    if unknown:
        raise KeyError(f"loss weights name unknown terms {unknown}; known terms: {sorted(terms)}")
    values = {name: terms[name](context) for name, w in weights.items() if w != 0.0}
    total = sum(weights[name] * v for name, v in values.items())
    return jnp.asarray(total), values


@dataclasses.dataclass(frozen=True)
class Objective:
    """A stage's loss: its terms and their weights together, as sorted (name, value) pairs so
    that the whole is hashable: the compiled programs take it as a static argument, and equal
    objectives (same term functions, same weights) share one compilation."""

    terms: tuple[tuple[str, LossTerm], ...]
    weights: tuple[tuple[str, float], ...]

    @classmethod
    def of(cls, terms: Mapping[str, LossTerm], weights: Mapping[str, float]) -> Objective:
        return cls(tuple(sorted(terms.items())), tuple(sorted((str(k), float(v)) for k, v in weights.items())))

    @property
    def names(self) -> tuple[str, ...]:
        """The weighted terms' names."""
        return tuple(name for name, _ in self.weights)

    def __call__(self, context) -> tuple[Float[Array, ""], dict[str, Float[Array, ""]]]:
        """`weighted_sum` of the terms on `context`: (total, each evaluated term's value)."""
        return weighted_sum(dict(self.terms), dict(self.weights), context)


# Term tables: each maps a name to a function of the stage's context (see the stage modules for
# the fields a context carries). The configs' `loss_weights` select and weight them.
CAMERA_TERMS: dict[str, LossTerm] = {
    "photometric": lambda c: masked_photometric_loss(c.rendered_rgb, c.frame, c.background_mask, c.kind),
}

HSI_TERMS: dict[str, LossTerm] = {
    "rgb": lambda c: rgb_loss(c.render.rgb, c.frame, c.ssim_weight),
    "object_center": lambda c: object_center_loss(c.rendered_object_mask, c.object_mask, c.l2_kind),
    "object_depth": lambda c: object_depth_loss(c.render.depth, c.rendered_object_mask, c.object_depth0, c.l2_kind),
}

REFINE_TERMS: dict[str, LossTerm] = {
    "fit": lambda c: jnp.mean(jax.vmap(joint_fit_loss, in_axes=(0, 0, None))(c.reference_joints, c.joints,
                                                                             c.fit_distance)),
    "physics": lambda c: physics_loss(c.contact_per_frame, smoothness_loss(c.body_poses), c.contact_weight,
                                      c.smooth_weight),
}
