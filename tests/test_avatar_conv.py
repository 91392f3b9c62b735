"""The avatar's convolutions: equal to XLA's, gradients included, and canonical inside loops."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from zerohsi_jax.avatar.layers import canonical_conv


def _native(x, w, stride, padding):
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@pytest.mark.parametrize(
    "shape,k,stride,padding",
    [
        ((2, 9, 11, 3), 3, 1, ((1, 1), (1, 1))),
        ((1, 10, 10, 4), 4, 2, ((1, 1), (1, 1))),
        ((1, 9, 7, 2), 3, 2, ((0, 0), (0, 0))),
        ((1, 8, 8, 5), 2, 1, ((1, 0), (1, 0))),
        ((1, 12, 13, 3), 1, 1, ((0, 0), (0, 0))),
    ],
)
def test_values_and_gradients_equal_xla(shape, k, stride, padding, seed, x64):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=shape))
    w = jnp.asarray(rng.normal(size=(k, k, shape[-1], 6)))
    ours = canonical_conv(x, w, stride, padding)
    ref = _native(x, w, stride, padding)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-12, atol=1e-12)
    cot = jnp.asarray(rng.normal(size=ref.shape))
    g_ours = jax.grad(lambda x, w: jnp.sum(canonical_conv(x, w, stride, padding) * cot), argnums=(0, 1))(x, w)
    g_ref = jax.grad(lambda x, w: jnp.sum(_native(x, w, stride, padding) * cot), argnums=(0, 1))(x, w)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-11, atol=1e-11)


def test_gradient_convolutions_stay_canonical_inside_a_scan():
    """XLA:CPU only rewrites non-canonical convolutions outside loops; inside a `lax.scan` (the
    fitting stages) every convolution of the forward and both gradients must already be
    NHWC x HWIO."""
    x = jnp.ones((1, 16, 16, 8))
    w = jnp.ones((3, 3, 8, 8)) * 0.01

    def step(carry, _):
        x, w = carry
        gx, gw = jax.grad(lambda x, w: jnp.sum(canonical_conv(x, w, 2, ((1, 1), (1, 1))) ** 2), argnums=(0, 1))(x, w)
        return (x - 1e-3 * gx, w - 1e-3 * gw), None

    hlo = jax.jit(lambda x, w: jax.lax.scan(step, (x, w), None, length=3)[0]).lower(x, w).compile().as_text()
    labels = re.findall(r"convolution\(.*?dim_labels=(\S+?),", hlo)
    assert len(labels) >= 3
    assert set(labels) == {"b01f_01io->b01f"}, labels
