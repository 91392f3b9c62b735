"""EWA projection of 3D Gaussians to screen-space ellipses (gsplat 1.5.3's pinhole model)."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ..geometry import quaternion_to_matrix
from .camera import Camera
from .config import RasterConfig
from .gaussians import Gaussians


class Projected(eqx.Module):
    """Screen-space Gaussians of one camera. `visible` is False for culled ones, whose other
    fields are finite but meaningless."""

    means2d: Float[Array, "N 2"]
    conics: Float[Array, "N 3"]
    """Upper triangle (a, b, c) of the inverse 2D covariance: sigma = 0.5 (a dx^2 + c dy^2) + b dx dy."""
    depths: Float[Array, " N"]
    opacities: Float[Array, " N"]
    """Opacity used in compositing (times the antialiasing compensation when enabled)."""
    cov2d_diag: Float[Array, "N 2"]
    """Variances of the low-passed 2D covariance along x and y (pixels squared)."""
    extents: Float[Array, "N 2"]
    """Half-widths of the screen box outside which alpha < alpha_min."""
    visible: Bool[Array, " N"]


def covariance_3d(quats: Float[Array, "N 4"], log_scales: Float[Array, "N 3"]) -> Float[Array, "N 3 3"]:
    """Sigma = R S S^T R^T."""
    m = quaternion_to_matrix(quats) * jnp.exp(log_scales)[:, None, :]
    return m @ jnp.swapaxes(m, -1, -2)


def project(g: Gaussians, cam: Camera, cfg: RasterConfig = RasterConfig()) -> Projected:
    """Project every Gaussian of `g` into `cam`.

    The Jacobian of the perspective map is evaluated at the mean with x/z and y/z clamped to
    `clip_margin` of the half field of view beyond the image edge, and the 2D covariance gets
    `eps2d` on its diagonal (the EWA low-pass); both as gsplat 1.5.3 does it.

    Differentiated, the projection is recomputed from its inputs in the backward, in
    `cfg.projection_backward_chunks` chunks of Gaussians (`_project_recomputed`), rather than keeping
    its intermediates (rotations, 3D and 2D covariances, Jacobians: about 50 floats per Gaussian)
    alive through binning and compositing; 0 keeps them (plain autodiff of `project_fields`), as
    do sets of fewer than `cfg.projection_backward_min_gaussians`."""
    fields = (g.means, g.quats, g.log_scales, g.opacity_logits)
    if cfg.projection_backward_chunks == 0 or g.means.shape[0] < cfg.projection_backward_min_gaussians:
        return project_fields(*fields, cam, cfg)
    return _project_recomputed(fields, cam, cfg)


def project_fields(means, quats, log_scales, opacity_logits, cam: Camera, cfg: RasterConfig) -> Projected:
    """`project` on the four fields of `Gaussians` it reads (its plain, autodiff form)."""
    rot = cam.viewmat[:3, :3]
    trans = cam.viewmat[:3, 3]
    p_cam = means @ rot.T + trans
    cov_cam = rot @ covariance_3d(quats, log_scales) @ rot.T

    x, y, z = p_cam[:, 0], p_cam[:, 1], p_cam[:, 2]
    in_depth = (z > cam.near) & (z < cam.far)
    # A safe depth keeps culled Gaussians (and their gradients) finite.
    z_safe = jnp.where(in_depth, z, 1.0)
    tan_fovx = 0.5 * cam.width / cam.fx
    tan_fovy = 0.5 * cam.height / cam.fy
    lim_x_pos = (cam.width - cam.cx) / cam.fx + cfg.clip_margin * tan_fovx
    lim_x_neg = cam.cx / cam.fx + cfg.clip_margin * tan_fovx
    lim_y_pos = (cam.height - cam.cy) / cam.fy + cfg.clip_margin * tan_fovy
    lim_y_neg = cam.cy / cam.fy + cfg.clip_margin * tan_fovy
    tx = z_safe * jnp.clip(x / z_safe, -lim_x_neg, lim_x_pos)
    ty = z_safe * jnp.clip(y / z_safe, -lim_y_neg, lim_y_pos)
    zeros = jnp.zeros_like(z_safe)
    jac = jnp.stack(
        [
            jnp.stack([cam.fx / z_safe, zeros, -cam.fx * tx / z_safe**2], -1),
            jnp.stack([zeros, cam.fy / z_safe, -cam.fy * ty / z_safe**2], -1),
        ],
        -2,
    )
    cov2d = jac @ cov_cam @ jnp.swapaxes(jac, -1, -2)
    c00, c01, c10, c11 = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 0], cov2d[:, 1, 1]
    det_orig = c00 * c11 - c01 * c10
    c00 = c00 + cfg.eps2d
    c11 = c11 + cfg.eps2d
    det_raw = c00 * c11 - c01 * c10
    det = jnp.maximum(det_raw, 1e-10)
    conics = jnp.stack([c11 / det, -0.5 * (c01 + c10) / det, c00 / det], -1)
    means2d = jnp.stack([cam.fx * x / z_safe + cam.cx, cam.fy * y / z_safe + cam.cy], -1)

    opacities = jax.nn.sigmoid(opacity_logits)
    if cfg.antialiased:
        opacities = opacities * jnp.sqrt(jnp.maximum(det_orig / det, 0.0))

    # Screen extent: alpha = o exp(-sigma) >= alpha_min inside the ellipse
    # d^T Sigma^-1 d <= 2 ln(o / alpha_min); its bounding box has half-widths r sqrt(Sigma_xx), r sqrt(Sigma_yy).
    # The tiny relative margin only ever adds pairs whose alpha the compositor then skips.
    o = jax.lax.stop_gradient(opacities)
    r2 = 2.0 * jnp.log(jnp.maximum(o, cfg.alpha_min) / cfg.alpha_min)
    diag = jax.lax.stop_gradient(jnp.stack([c00, c11], -1))
    extents = jnp.sqrt(r2[:, None] * jnp.maximum(diag, 0.0)) * (1.0 + 1e-4) + 1e-4
    m2d = jax.lax.stop_gradient(means2d)
    off = cfg.pixel_offset
    on_screen = (
        (m2d[:, 0] + extents[:, 0] >= off)
        & (m2d[:, 0] - extents[:, 0] <= cam.width - 1 + off)
        & (m2d[:, 1] + extents[:, 1] >= off)
        & (m2d[:, 1] - extents[:, 1] <= cam.height - 1 + off)
    )
    visible = in_depth & (det_raw > 0) & (o > cfg.alpha_min) & on_screen
    return Projected(
        means2d=means2d,
        conics=conics,
        depths=z,
        opacities=opacities,
        cov2d_diag=jnp.stack([c00, c11], -1),
        extents=extents,
        visible=visible,
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _project_recomputed(fields, cam: Camera, cfg: RasterConfig) -> Projected:
    """`project_fields` whose backward recomputes it, chunk by chunk of Gaussians."""
    return project_fields(*fields, cam, cfg)


def _project_recomputed_fwd(fields, cam, cfg):
    # Only the inputs are kept: they are alive anyway (parameters, or the posed avatar).
    return project_fields(*fields, cam, cfg), (fields, cam)


def _project_recomputed_bwd(cfg, residuals, cotangent):
    fields, cam = residuals
    float_cotangent = (cotangent.means2d, cotangent.conics, cotangent.depths, cotangent.opacities,
                       cotangent.cov2d_diag, cotangent.extents)  # fmt: skip
    n = fields[0].shape[0]
    chunks = max(1, min(cfg.projection_backward_chunks, n))
    size = -(-n // chunks)
    pad = size * chunks - n

    def split(x, mode):
        # Padding repeats the last Gaussian (finite values; its cotangent is zero), not zeros,
        # whose zero quaternion would put NaN into the camera's gradient through 0 * NaN.
        if pad:
            x = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1), mode=mode)
        return x.reshape((chunks, size) + x.shape[1:])

    def chunk_grads(cam_grad, chunk):
        chunk_fields, chunk_cotangent = chunk
        out, vjp = jax.vjp(lambda f, c: project_fields(*f, c, cfg), chunk_fields, cam)
        visible = np.zeros(out.visible.shape, jax.dtypes.float0)
        field_grads, chunk_cam_grad = vjp(Projected(*chunk_cotangent, visible=visible))
        return jax.tree.map(jnp.add, cam_grad, chunk_cam_grad), field_grads

    chunked = (tuple(split(x, "edge") for x in fields), tuple(split(x, "constant") for x in float_cotangent))
    cam_grad, field_grads = jax.lax.scan(chunk_grads, jax.tree.map(jnp.zeros_like, cam), chunked)
    field_grads = tuple(x.reshape((chunks * size,) + x.shape[2:])[:n] for x in field_grads)
    return field_grads, cam_grad


_project_recomputed.defvjp(_project_recomputed_fwd, _project_recomputed_bwd)
