"""Front-to-back alpha compositing of binned Gaussians, tile by tile, with a recomputing backward.

Pixels are laid out per tile, (tiles, tile_size^2). Each tile's Gaussians are visited in chunks of
`chunk_size` slots; the slots of a chunk are unrolled one after the other, each step a fused
elementwise pass over all (tile, pixel) pairs, and a while loop runs chunks until every tile is
exhausted or every pixel has stopped.

Per pixel, exactly as gsplat 1.5.3's forward kernel:
    sigma = 0.5 (a dx^2 + c dy^2) + b dx dy,  d = pixel centre - mean
    alpha = min(alpha_max, o exp(-sigma)), skipped when sigma < 0 or alpha < alpha_min
    the pixel stops at the first Gaussian after which T would fall to transmittance_min
    (that Gaussian excluded); C = sum_j f_j alpha_j T_j + T_final background.

`composite` has a `jax.custom_vjp` whose backward walks every tile back to front from the final
transmittance and the per-pixel stop index, recomputing alphas chunk by chunk, the scheme of the
INRIA and gsplat backward kernels. Its inputs and residuals are plain arrays so that a compiled
kernel can replace it. This module chooses the backward, after `RasterConfig.backward`: the
compiled kernel (`kernel_backward`), `composite_backward` (the same walk in pure JAX), or the
twin `reference.composite_autodiff` (the same forward steps, `composite_step`, as a scan under
plain autodiff; the reference the tests compare the custom backward with).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from .composite_step import forward_chunk, gather_chunk, initial_state, slot_alpha, tile_pixel_centers, tiles_to_image
from .config import RasterConfig
from .reference import composite_autodiff


def _num_chunks(counts, capacity: int, cfg: RasterConfig):
    return (jnp.minimum(jnp.max(counts), capacity) + cfg.chunk_size - 1) // cfg.chunk_size


def _tile_levels(num_tiles: int, ratio: int = 4) -> list[int]:
    """Prefix sizes of the count-sorted tiles the loop narrows to: T, T/4, T/16, ..., 1."""
    sizes = [num_tiles]
    while sizes[-1] > 1:
        sizes.append(-(-sizes[-1] // ratio))
    return sizes


def _level_chunk_ends(counts_sorted, sizes, capacity: int, cfg: RasterConfig):
    """Chunk index where each level stops: level l serves tiles [sizes[l+1], sizes[l]), whose
    largest count is counts_sorted[sizes[l+1]] (the last level serves tile 0, the largest)."""
    nxt = [sizes[i + 1] if i + 1 < len(sizes) else 0 for i in range(len(sizes))]
    need = jnp.minimum(counts_sorted[jnp.asarray(nxt)], capacity)
    return (need + cfg.chunk_size - 1) // cfg.chunk_size


def _sort_tiles(ids, counts, pix):
    """Tiles in decreasing order of their counts, so that the tiles still busy after any chunk
    form a prefix, and the permutation that undoes it."""
    ids, counts = jnp.asarray(ids), jnp.asarray(counts)
    order = jnp.argsort(-counts, stable=True)
    inverse = jnp.argsort(order)
    return order, inverse, ids[order], counts[order], pix[order]


def _composite_forward(means2d, conics, opacities, features, background, ids, counts, pix, cfg: RasterConfig):
    """Front to back over chunks. Tiles run sorted by count and the loop narrows to the prefix of
    tiles that still have slots (T, T/4, ...), so a few crowded tiles (a small, detailed human in
    a wide shot) do not make every tile loop to their count; each level also stops once every
    pixel of its tiles has stopped."""
    capacity = ids.shape[1]
    order, inverse, ids_s, counts_s, pix_s = _sort_tiles(ids, counts, pix)
    state = initial_state(pix.shape[0], pix.shape[1], features.shape[1], capacity, features.dtype)
    sizes = _tile_levels(pix.shape[0])
    ends = _level_chunk_ends(counts_s, sizes, capacity, cfg)
    k = jnp.int32(0)
    for level, n in enumerate(sizes):
        end = ends[level]
        part = jax.tree.map(lambda x, n=n: x[:n], state)
        level_pix, level_ids, level_counts = pix_s[:n], ids_s[:n], counts_s[:n]

        def cond(carry, end=end):
            k, st = carry
            return (k < end) & ~jnp.all(st[3])

        def body(carry, level_pix=level_pix, level_ids=level_ids, level_counts=level_counts):
            k, st = carry
            st = forward_chunk(
                st, k * cfg.chunk_size, level_pix, means2d, conics, opacities, features, level_ids, level_counts, cfg
            )
            return k + 1, st

        k, part = jax.lax.while_loop(cond, body, (k, part))
        state = jax.tree.map(lambda x, y, n=n: x.at[:n].set(y), state, part)
    trans, acc, stop, _ = (x[inverse] for x in state)
    out = acc + trans[:, :, None] * background
    return out, trans, stop


@functools.partial(jax.custom_vjp, nondiff_argnums=(8,))
def _composite_custom(means2d, conics, opacities, features, background, ids, counts, pix, cfg):
    out, _, _ = _composite_forward(means2d, conics, opacities, features, background, ids, counts, pix, cfg)
    return out


def _composite_custom_fwd(means2d, conics, opacities, features, background, ids, counts, pix, cfg):
    out, trans, stop = _composite_forward(means2d, conics, opacities, features, background, ids, counts, pix, cfg)
    residuals = (means2d, conics, opacities, features, background, ids, counts, pix, trans, stop)
    return out, residuals


def composite_backward(
    means2d: Float[Array, "N 2"],
    conics: Float[Array, "N 3"],
    opacities: Float[Array, " N"],
    features: Float[Array, "N C"],
    background: Float[Array, " C"],
    ids: Int[Array, "T K"],
    counts: Int[Array, " T"],
    pix: Float[Array, "T P 2"],
    final_trans: Float[Array, "T P"],
    stop: Int[Array, "T P"],
    grad_out: Float[Array, "T P C"],
    cfg: RasterConfig,
) -> tuple[Float[Array, "N 2"], Float[Array, "N 3"], Float[Array, " N"], Float[Array, "N C"], Float[Array, " C"]]:
    """Gradients of the composited tiles w.r.t. means2d, conics, opacities, features, background.

    Walks every tile's slots from the last to the first. A slot's transmittance is recovered
    from the one after it, T_j = T_{j+1} / (1 - alpha_j), and the colour S behind a slot (later
    slots plus the background) is carried projected on the cotangent g, one scalar per pixel:
        dL/dalpha_j = g . f_j T_j - (g . S_behind_j) / (1 - alpha_j).
    Only slots before the pixel's stop index contribute, as in the forward. Its compiled twin
    is `kernel_backward.kernel_composite_backward` (same arguments, same results)."""
    n = means2d.shape[0]
    b = cfg.chunk_size
    capacity = ids.shape[1]
    n_chunks = _num_chunks(counts, capacity, cfg)
    grad_behind = final_trans * jnp.einsum("tpc,c->tp", grad_out, background)
    grad_background = jnp.einsum("tpc,tp->c", grad_out, final_trans)
    init = (
        n_chunks - 1,
        final_trans,
        grad_behind,
        jnp.zeros_like(means2d),
        jnp.zeros_like(conics),
        jnp.zeros_like(opacities),
        jnp.zeros_like(features),
    )

    def cond(carry):
        return carry[0] >= 0

    def body(carry):
        k, t_after, grad_behind, g_mean, g_conic, g_opac, g_feat = carry
        start = k * b
        slot_ids, slot_valid, mean, conic, opac, feat = gather_chunk(
            means2d, conics, opacities, features, ids, counts, start, b
        )
        grad_feat_dot = jnp.einsum("tpc,tbc->tbp", grad_out, feat)  # g . f_j for every slot
        slot_grads = [None] * b
        for j in reversed(range(b)):
            dx, dy, sigma, vis, alpha, keep = slot_alpha(pix, mean[:, j], conic[:, j], opac[:, j], cfg)
            contrib = keep & ((start + j) < stop)
            one_minus = jnp.where(contrib, 1.0 - alpha, 1.0)
            t_j = t_after / one_minus
            weight = jnp.where(contrib, alpha * t_j, 0.0)
            gf = grad_feat_dot[:, j]
            grad_alpha = jnp.where(contrib, t_j * gf - grad_behind / one_minus, 0.0)
            grad_vis = jnp.where(vis < cfg.alpha_max, grad_alpha, 0.0)
            grad_sigma = -grad_vis * vis
            ca, cb, cc = conic[:, j, 0:1], conic[:, j, 1:2], conic[:, j, 2:3]
            slot_grads[j] = (
                jnp.stack([-jnp.sum(grad_sigma * (ca * dx + cb * dy), 1),
                           -jnp.sum(grad_sigma * (cb * dx + cc * dy), 1)], -1),
                jnp.stack([jnp.sum(grad_sigma * 0.5 * dx * dx, 1),
                           jnp.sum(grad_sigma * dx * dy, 1),
                           jnp.sum(grad_sigma * 0.5 * dy * dy, 1)], -1),
                jnp.sum(grad_vis * jnp.exp(-jnp.maximum(sigma, 0.0)), 1),
                jnp.einsum("tpc,tp->tc", grad_out, weight),
            )  # fmt: skip
            grad_behind = grad_behind + weight * gf
            t_after = t_j
        s_mean, s_conic, s_opac, s_feat = (jnp.stack(parts, 1) for parts in zip(*slot_grads, strict=True))
        target = jnp.where(slot_valid, slot_ids, n)  # out-of-range index: dropped by the scatter
        g_mean = g_mean.at[target].add(s_mean, mode="drop")
        g_conic = g_conic.at[target].add(s_conic, mode="drop")
        g_opac = g_opac.at[target].add(s_opac, mode="drop")
        g_feat = g_feat.at[target].add(s_feat, mode="drop")
        return k - 1, t_after, grad_behind, g_mean, g_conic, g_opac, g_feat

    _, _, _, g_mean, g_conic, g_opac, g_feat = jax.lax.while_loop(cond, body, init)
    return g_mean, g_conic, g_opac, g_feat, grad_background


_warned_fallback: set[str] = set()
"""Platforms whose fallback to the pure-JAX backward was already reported (once per process)."""


def _warn_fallback(platform: str, reason: str) -> None:
    if platform in _warned_fallback:
        return
    _warned_fallback.add(platform)
    warnings.warn(
        f"zerohsi_jax: the compiled compositing backward is unavailable on {platform}, so the "
        f"pure-JAX backward is used there (the same gradients up to rounding, slower). Set "
        f"RasterConfig(backward='jax') to silence this. Reason: {reason}",
        RuntimeWarning,
        stacklevel=3,
    )


def _compiled_backward(args, cfg: RasterConfig):
    """The backward `RasterConfig.backward` = 'auto' or 'kernel' selects: the kernel on each
    platform where it is built, the pure-JAX `composite_backward` on the others. The choice is
    made when XLA lowers for a platform, so one traced function serves CPU and GPU."""
    # Imported at the first trace of this backward rather than with the package: importing
    # zerohsi_jax.splat then loads no compiler machinery, and `python -m ...kernel_backward build`
    # runs its module as __main__ without a copy of it already imported.
    from . import kernel_backward
    from .kernel_build import kernel_platforms

    platforms = kernel_platforms()
    built = {p: kernel_backward.load_kernel(p) for p in platforms}
    if cfg.backward == "kernel":
        wanted = "cuda" if jax.default_backend() == "gpu" else "cpu"
        if not built.get(wanted, False):
            raise kernel_backward.KernelUnavailableError(
                f"RasterConfig(backward='kernel') but the kernel is unavailable on {wanted}: "
                f"{kernel_backward.kernel_status(wanted)}. Use backward='auto' to fall back to the pure-JAX "
                f"backward."
            )
    else:
        for p in platforms:
            if not built[p]:
                _warn_fallback(p, kernel_backward.kernel_status(p))

    def with_kernel(*a):
        return kernel_backward.kernel_composite_backward(*a, cfg)

    def with_jax(*a):
        return composite_backward(*a, cfg)

    branches = {p: with_kernel for p in platforms if built[p]}
    if not branches:
        return with_jax(*args)
    return jax.lax.platform_dependent(*args, **branches, default=with_jax)


def _composite_custom_bwd(cfg, residuals, grad_out):
    means2d, conics, opacities, features, background, ids, counts, pix, trans, stop = residuals
    args = (means2d, conics, opacities, features, background, ids, counts, pix, trans, stop, grad_out)
    if cfg.backward in ("jax", "custom"):
        grads = composite_backward(*args, cfg)
    else:  # 'auto' or 'kernel': the compiled backward where it is built
        grads = _compiled_backward(args, cfg)
    return (*grads, None, None, None)


_composite_custom.defvjp(_composite_custom_fwd, _composite_custom_bwd)


def composite(
    means2d: Float[Array, "N 2"],
    conics: Float[Array, "N 3"],
    opacities: Float[Array, " N"],
    features: Float[Array, "N C"],
    background: Float[Array, " C"],
    ids: Int[Array, "T K"],
    counts: Int[Array, " T"],
    width: int,
    height: int,
    cfg: RasterConfig = RasterConfig(),
) -> Float[Array, "H W C"]:
    """Composite `features` (any channels) of the binned Gaussians over `background`.

    Differentiated after `cfg.backward` (see `RasterConfig`); its plain twin is
    `reference.composite_autodiff`, which `backward="autodiff"` selects."""
    pix = tile_pixel_centers(width, height, cfg).astype(features.dtype)
    background = jnp.broadcast_to(background, features.shape[1:]).astype(features.dtype)
    fn = composite_autodiff if cfg.backward == "autodiff" else _composite_custom
    tiles = fn(means2d, conics, opacities, features, background, ids, counts, pix, cfg)
    return tiles_to_image(tiles, width, height, cfg.tile_size)
