"""Fit a VPoser (v2 layout) to a set of body poses: a pose prior for bodies or motions that the
official V02_05 (trained on AMASS) does not cover, and the demo's prior, since no official
weights can be downloaded here.

The objective is VPoser's: reconstruct the joint rotations through the 6D decoder and keep the
posterior close to N(0, I). The input BatchNorm is set to the data's statistics once (eval mode
throughout, as the refinement uses it), so the file loads like any converted VPoser.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float

from ..geometry import axis_angle_to_matrix
from .vposer import VPoser, random_state_dict


def _statistics_filter(model: VPoser):
    """True on the arrays training updates: every Linear and the BatchNorm affine parameters,
    not the BatchNorm running statistics (fixed from the data)."""
    spec = jax.tree.map(eqx.is_inexact_array, model)
    for bn in ("enc_bn1", "enc_bn2"):
        spec = eqx.tree_at(lambda m, bn=bn: (getattr(m, bn).running_mean, getattr(m, bn).running_var), spec,
                           (False, False))
    return spec


def vposer_loss(model: VPoser, poses: Float[Array, "B 63"], key, kl_weight: float):
    """Rotation reconstruction (mean squared matrix error) + kl_weight * KL(q(z|x) || N(0, I))."""
    mu, std = model._encode(poses)
    z = mu + std * jax.random.normal(key, mu.shape, mu.dtype)
    rec = model._decode(z).pose_body_matrot
    target = axis_angle_to_matrix(poses.reshape(poses.shape[0], 21, 3))
    reconstruction = jnp.mean(jnp.sum((rec - target) ** 2, axis=(-2, -1)))
    kl = jnp.mean(jnp.sum(0.5 * (mu**2 + std**2 - 1.0) - jnp.log(std + 1e-8), axis=-1))
    return reconstruction + kl_weight * kl, (reconstruction, kl)


def train_vposer(poses: np.ndarray, *, seed: int = 0, steps: int = 1500, batch_size: int = 256,
                 learning_rate: float = 1e-3, kl_weight: float = 1e-3, num_neurons: int = 256,
                 latent_dim: int = 32) -> tuple[VPoser, np.ndarray]:
    """Train on `poses` (N, 63) axis-angle; returns the model and the loss per step. One compiled
    `lax.scan` over the steps."""
    poses = np.asarray(poses, np.float32)
    if poses.ndim != 2 or poses.shape[1] != 63:
        raise ValueError(f"train_vposer needs poses of shape (N, 63), got {poses.shape}")
    state = random_state_dict(seed, version=2, num_neurons=num_neurons, latent_dim=latent_dim)
    model = VPoser.from_state_dict(state, version=2)
    identity = lambda bn, mean, var: eqx.tree_at(  # noqa: E731
        lambda b: (b.weight, b.bias, b.running_mean, b.running_var), bn,
        (jnp.ones_like(bn.weight), jnp.zeros_like(bn.bias), jnp.asarray(mean), jnp.asarray(var)),
    )
    model = eqx.tree_at(lambda m: m.enc_bn1, model, identity(model.enc_bn1, poses.mean(0), poses.var(0) + 1e-4))
    hidden = jax.nn.leaky_relu(model.enc_fc1(model.enc_bn1(jnp.asarray(poses))), 0.01)
    model = eqx.tree_at(lambda m: m.enc_bn2, model,
                        identity(model.enc_bn2, np.asarray(hidden.mean(0)), np.asarray(hidden.var(0)) + 1e-4))
    params, static = eqx.partition(model, _statistics_filter(model))
    opt = optax.adam(learning_rate)
    data = jnp.asarray(poses)

    @jax.jit
    def run(params, key):
        def step(carry, key):
            params, opt_state = carry
            k_batch, k_noise = jax.random.split(key)
            batch = data[jax.random.randint(k_batch, (batch_size,), 0, data.shape[0])]
            (loss, _), grads = jax.value_and_grad(
                lambda p: vposer_loss(eqx.combine(p, static), batch, k_noise, kl_weight), has_aux=True
            )(params)
            updates, opt_state = opt.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), jax.random.split(key, steps))
        return params, losses

    params, losses = run(params, jax.random.key(seed))
    return eqx.combine(params, static), np.asarray(losses)
