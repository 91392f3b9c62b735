"""StyleGAN2 building blocks of the Animatable Gaussians StyleUNet, in Equinox.

Each layer keeps its parameters in the official (PyTorch) layout and under the official names,
so that a state dict maps onto the module one key at a time (`state_keys`). Activations are
NHWC without a batch axis: one example per call, batches come from `jax.vmap`.

The fixed filters of the official layers (blur kernels, Haar wavelets) are registered buffers
in its state dict; here they are numpy constants (`constant_keys` lists what the state dict
must hold for them), so that they are never trained and never leaves of the pytree.

Semantics follow the official plain (non-CUDA) reference paths: `upfirdn2d_native` (zero
insertion, padding or cropping, convolution with the flipped kernel, decimation) and
`fused_leaky_relu` (bias, leaky ReLU with slope 0.2, times sqrt 2).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

BLUR_KERNEL = (1, 3, 3, 1)
LEAKY_SLOPE = 0.2
ACT_GAIN = math.sqrt(2.0)

# A state-dict view of a module: official key (relative to the module) -> accessor.
KeyMap = dict[str, Callable[[eqx.Module], Array]]


def nest(prefix: str, child: Callable, keys: KeyMap) -> KeyMap:
    """Keys of a submodule reached by `child(module)`, under `prefix.`."""
    return {f"{prefix}.{k}": (lambda m, f=f: f(child(m))) for k, f in keys.items()}


def nest_constants(prefix: str, consts: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{prefix}.{k}": v for k, v in consts.items()}


# ----------------------------------------------------------------------------- fixed filters
def make_kernel(k=BLUR_KERNEL) -> np.ndarray:
    """The official `make_kernel`: outer product of a 1D kernel, normalised to sum 1."""
    k = np.asarray(k, np.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return (k / k.sum()).astype(np.float32)


def haar_kernels() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """2x2 Haar analysis filters ll, lh, hl, hh (rows index the vertical filter)."""
    low = np.full((1, 2), 1 / math.sqrt(2), np.float32)
    high = low.copy()
    high[0, 0] = -high[0, 0]
    return (low.T * low, high.T * low, low.T * high, high.T * high)


def upfirdn2d(
    x: Float[Array, "H W C"], kernel: np.ndarray, up: int = 1, down: int = 1, pad: tuple[int, ...] = (0, 0)
) -> Float[Array, "H2 W2 C"]:
    """Upsample by zero insertion, pad (negative pads crop), convolve each channel with
    `kernel` (a true convolution: the kernel is flipped), then keep every `down`-th sample.

    `pad` is (p0, p1) for both axes or (x0, x1, y0, y1), as in the official function."""
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    px0, px1, py0, py1 = pad
    factors = _rank_one_factors(kernel)
    if factors is not None:
        # Every filter of this network is an outer product (blur, Haar): filter rows, then
        # columns, with strided slices. XLA's depthwise convolution is ~30x slower on CPU.
        col_taps, row_taps = factors
        x = _upfirdn1d(x, col_taps, up, down, py0, py1, axis=0)
        return _upfirdn1d(x, row_taps, up, down, px0, px1, axis=1)
    kh, kw = kernel.shape
    channels = x.shape[-1]
    # Interior padding inserts up-1 zeros between samples; the official op also puts up-1
    # zeros after the last sample, so they go on the high side.
    zero = jnp.zeros((), x.dtype)
    x = jax.lax.pad(x, zero, [(py0, py1 + up - 1, up - 1), (px0, px1 + up - 1, up - 1), (0, 0, 0)])
    flipped = np.ascontiguousarray(kernel[::-1, ::-1])
    w = jnp.asarray(np.tile(flipped[:, :, None, None], (1, 1, 1, channels)), x.dtype)
    out = jax.lax.conv_general_dilated(
        x[None], w, window_strides=(down, down), padding="VALID",
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
    )  # fmt: skip
    assert out.shape[1] == (x.shape[0] - kh) // down + 1 and out.shape[2] == (x.shape[1] - kw) // down + 1
    return out[0]


def _rank_one_factors(kernel: np.ndarray):
    """(a, b) with kernel == outer(a, b), or None when the kernel is not rank one."""
    k = np.asarray(kernel, np.float64)
    u, s, vt = np.linalg.svd(k)
    if s.size > 1 and s[1] > 1e-9 * max(s[0], 1e-30):
        return None
    a = u[:, 0] * math.sqrt(s[0])
    b = vt[0] * math.sqrt(s[0])
    return a, b


def _upfirdn1d(x, taps: np.ndarray, up: int, down: int, pad0: int, pad1: int, axis: int):
    """One axis of upfirdn2d: zero insertion, pad/crop, convolution with `taps`, decimation."""
    n_taps = len(taps)
    config = [(0, 0, 0)] * x.ndim
    config[axis] = (pad0, pad1 + up - 1, up - 1)
    z = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
    n_out = (z.shape[axis] - n_taps) // down + 1
    flipped = taps[::-1]
    out = None
    for t in range(n_taps):
        if flipped[t] == 0.0:
            continue
        start = [0] * x.ndim
        limit = list(z.shape)
        strides = [1] * x.ndim
        start[axis] = t
        limit[axis] = t + (n_out - 1) * down + 1
        strides[axis] = down
        term = float(flipped[t]) * jax.lax.slice(z, start, limit, strides)
        out = term if out is None else out + term
    return out


def fused_leaky_relu(x: Float[Array, "... C"], bias: Float[Array, " C"] | None) -> Float[Array, "... C"]:
    if bias is not None:
        x = x + bias
    return jax.nn.leaky_relu(x, LEAKY_SLOPE) * ACT_GAIN


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def canonical_conv(x: Float[Array, "N H W Ci"], w: Float[Array, "K L Ci Co"], stride: int,
                   padding: tuple[tuple[int, int], tuple[int, int]]) -> Float[Array, "N h w Co"]:
    """NHWC x HWIO convolution whose gradients are NHWC x HWIO convolutions too.

    XLA:CPU runs a convolution fast only in this canonical layout. It rewrites other layouts
    (JAX's gradient convolutions among them) into it, but not inside while loops, where they
    then run 10-30x slower; the fitting stages differentiate the avatar inside `lax.scan`. So
    both gradients are written out here as canonical convolutions with explicit transposes."""
    return _conv_nhwc(x, w, stride, padding)


def _conv_nhwc(x, w, stride, padding, lhs_dilation=1, rhs_dilation=1):
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(stride, stride), padding=padding, lhs_dilation=(lhs_dilation,) * 2,
        rhs_dilation=(rhs_dilation,) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip


def _canonical_conv_fwd(x, w, stride, padding):
    return _conv_nhwc(x, w, stride, padding), (x, w)


def _canonical_conv_bwd(stride, padding, residuals, g):
    x, w = residuals
    kh, kw = w.shape[0], w.shape[1]
    (p0, p1), (q0, q1) = padding
    # Input rows/columns past the last window the forward used (strided convolutions).
    rh = (x.shape[1] + p0 + p1 - kh) % stride
    rw = (x.shape[2] + q0 + q1 - kw) % stride
    # dx: the cotangent, dilated by the stride, convolved with the flipped kernel (in/out swapped).
    w_t = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
    dx = _conv_nhwc(g, w_t, 1, ((kh - 1 - p0, kh - 1 - p1 + rh), (kw - 1 - q0, kw - 1 - q1 + rw)), lhs_dilation=stride)
    # dw[a, b, i, o] = sum_{n, y, z} x_pad[n, y s + a, z s + b, i] g[n, y, z, o]: a convolution with
    # the input channels as batch and the images as features.
    lhs = jnp.transpose(x, (3, 1, 2, 0))  # (Ci, H, W, N)
    rhs = jnp.transpose(g, (1, 2, 0, 3))  # (h, w, N, Co)
    dw = _conv_nhwc(lhs, rhs, 1, ((p0, p1 - rh), (q0, q1 - rw)), rhs_dilation=stride)  # (Ci, K, L, Co)
    return dx, jnp.transpose(dw, (1, 2, 0, 3))


canonical_conv.defvjp(_canonical_conv_fwd, _canonical_conv_bwd)


def conv2d(x: Float[Array, "H W Ci"], weight_oihw, stride: int = 1, padding: int = 0):
    """PyTorch's F.conv2d (OIHW weights, symmetric zero padding) on one NHWC image."""
    w = jnp.transpose(weight_oihw, (2, 3, 1, 0))
    return canonical_conv(x[None], w, stride, ((padding, padding), (padding, padding)))[0]


def conv_transpose2d_stride2(x: Float[Array, "H W Ci"], weight_oihw) -> Float[Array, "h w Co"]:
    """`F.conv_transpose2d(x, weight.transpose(0, 1), stride=2, padding=0)` (output 2H + k - 2).

    Computed by phases: output pixel (2m + p, 2n + q) only sees kernel taps of parity (p, q),
    so one plain convolution with ceil(k/2)^2 taps and 4x the output channels gives all four
    phases, which are then interleaved. On CPU this is ~2x faster forward and ~20x faster for
    the weight gradient than the zero-dilated convolution."""
    out_ch, in_ch, k, _ = weight_oihw.shape
    taps = (k + 1) // 2
    # phase_w[p, q, o, i, t, u] = w[o, i, p + 2 (taps-1-t), q + 2 (taps-1-u)] (zero outside).
    idx = np.array([[p + 2 * (taps - 1 - t) for t in range(taps)] for p in range(2)])  # (2, taps)
    valid = idx < k
    idx = np.minimum(idx, k - 1)
    w = weight_oihw[:, :, idx[:, None, :, None], idx[None, :, None, :]]  # (O, I, 2, 2, taps, taps)
    w = w * jnp.asarray((valid[:, None, :, None] & valid[None, :, None, :]), weight_oihw.dtype)
    w = jnp.transpose(w, (2, 3, 0, 1, 4, 5)).reshape(4 * out_ch, in_ch, taps, taps)
    h, wd = x.shape[0], x.shape[1]
    # Pad the end explicitly and the start in the convolution, so that the convolution keeps
    # its input size: XLA's CPU gradients of size-changing convolutions are up to 20x slower.
    x = jnp.pad(x, ((0, taps - 1), (0, taps - 1), (0, 0)))
    out = canonical_conv(x[None], jnp.transpose(w, (2, 3, 1, 0)), 1, ((taps - 1, 0), (taps - 1, 0)))[0]
    # (H + taps - 1, W + taps - 1, 4 O), channels ordered (p, q, o)
    oh, ow = out.shape[0], out.shape[1]
    out = out.reshape(oh, ow, 2, 2, out_ch).transpose(0, 2, 1, 3, 4).reshape(2 * oh, 2 * ow, out_ch)
    return out[: 2 * h + k - 2, : 2 * wd + k - 2]


def resize_bilinear(x: Float[Array, "H W C"], height: int, width: int) -> Float[Array, "h w C"]:
    """`F.interpolate(mode='bilinear', align_corners=False)`: half-pixel centres, source
    coordinates below zero clamped to zero, the upper neighbour clamped to the last pixel."""

    def weights(n_out: int, n_in: int) -> np.ndarray:
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(int), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = src - lo
        m = np.zeros((n_out, n_in), np.float32)
        np.add.at(m, (np.arange(n_out), lo), 1.0 - frac)
        np.add.at(m, (np.arange(n_out), hi), frac)
        return m

    wy = jnp.asarray(weights(height, x.shape[0]), x.dtype)
    wx = jnp.asarray(weights(width, x.shape[1]), x.dtype)
    return jnp.einsum("yh,hwc,xw->yxc", wy, x, wx)


# ----------------------------------------------------------------------------- parameter layers
class EqualLinear(eqx.Module):
    """Linear layer with equalised learning rate: weight * lr_mul / sqrt(in), bias * lr_mul."""

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"]
    lr_mul: float = eqx.field(static=True)
    activate: bool = eqx.field(static=True)

    def __init__(self, in_dim, out_dim, *, key, bias_init=0.0, lr_mul=1.0, activate=False):
        self.weight = jax.random.normal(key, (out_dim, in_dim)) / lr_mul
        self.bias = jnp.full((out_dim,), bias_init, jnp.float32)
        self.lr_mul = float(lr_mul)
        self.activate = bool(activate)

    def __call__(self, x: Float[Array, " in"]) -> Float[Array, " out"]:
        scale = self.lr_mul / math.sqrt(self.weight.shape[1])
        out = (self.weight * scale) @ x
        if self.activate:
            return fused_leaky_relu(out, self.bias * self.lr_mul)
        return out + self.bias * self.lr_mul

    def state_keys(self) -> KeyMap:
        return {"weight": lambda m: m.weight, "bias": lambda m: m.bias}


class ConvLayer(eqx.Module):
    """The official `ConvLayer` with activation: [Blur,] EqualConv2d (no bias), FusedLeakyReLU.

    An `nn.Sequential`, so its state-dict keys are indices: `0.weight, 1.bias`, or with
    downsampling `0.kernel` (the blur), `1.weight, 2.bias`."""

    weight: Float[Array, "out in k k"]
    bias: Float[Array, " out"]
    downsample: bool = eqx.field(static=True)

    def __init__(self, in_ch, out_ch, kernel_size, *, key, downsample=False):
        self.weight = jax.random.normal(key, (out_ch, in_ch, kernel_size, kernel_size))
        self.bias = jnp.zeros((out_ch,), jnp.float32)
        self.downsample = bool(downsample)

    def __call__(self, x: Float[Array, "H W Ci"]) -> Float[Array, "h w Co"]:
        k = self.weight.shape[-1]
        scale = 1.0 / math.sqrt(self.weight.shape[1] * k * k)
        if self.downsample:
            p = (len(BLUR_KERNEL) - 2) + (k - 1)
            x = upfirdn2d(x, make_kernel(), pad=((p + 1) // 2, p // 2))
            out = conv2d(x, self.weight * scale, stride=2, padding=0)
        else:
            out = conv2d(x, self.weight * scale, padding=k // 2)
        return fused_leaky_relu(out, self.bias)

    def state_keys(self) -> KeyMap:
        i = 1 if self.downsample else 0
        return {f"{i}.weight": lambda m: m.weight, f"{i + 1}.bias": lambda m: m.bias}

    def constant_keys(self) -> dict[str, np.ndarray]:
        return {"0.kernel": make_kernel()} if self.downsample else {}


class ModulatedConv2d(eqx.Module):
    """Style-modulated convolution (StyleGAN2), optionally demodulated and 2x upsampling.

    The official fused path scales the weight per sample; with one sample per call that is the
    same as scaling the input channels, which keeps the convolution kernel shared under vmap
    when the style is (as here) the same for every sample."""

    weight: Float[Array, "1 out in k k"]
    modulation: EqualLinear
    demodulate: bool = eqx.field(static=True)
    upsample: bool = eqx.field(static=True)

    def __init__(self, in_ch, out_ch, kernel_size, style_dim, *, key, demodulate=True, upsample=False):
        k1, k2 = jax.random.split(key)
        self.weight = jax.random.normal(k1, (1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, key=k2, bias_init=1.0)
        self.demodulate = bool(demodulate)
        self.upsample = bool(upsample)

    def __call__(self, x: Float[Array, "H W Ci"], style: Float[Array, " S"]) -> Float[Array, "h w Co"]:
        _, out_ch, in_ch, k, _ = self.weight.shape
        w = self.weight[0] * (1.0 / math.sqrt(in_ch * k * k))
        s = self.modulation(style)
        w = w * s[None, :, None, None]
        if self.demodulate:
            w = w * jax.lax.rsqrt(jnp.sum(w * w, axis=(1, 2, 3)) + 1e-8)[:, None, None, None]
        if self.upsample:
            # conv_transpose2d(stride 2, padding 0), then the 4x4 blur (gain 4).
            out = conv_transpose2d_stride2(x, w)
            p = (len(BLUR_KERNEL) - 2) - (k - 1)
            return upfirdn2d(out, make_kernel() * 4.0, pad=((p + 1) // 2 + 1, p // 2 + 1))
        return conv2d(x, w, padding=k // 2)

    def state_keys(self) -> KeyMap:
        return {
            "weight": lambda m: m.weight,
            **nest("modulation", lambda m: m.modulation, self.modulation.state_keys()),
        }

    def constant_keys(self) -> dict[str, np.ndarray]:
        return {"blur.kernel": make_kernel() * 4.0} if self.upsample else {}


class StyledConv(eqx.Module):
    """ModulatedConv2d, then fixed-noise injection with a learned gain, then bias + leaky ReLU."""

    conv: ModulatedConv2d
    noise_weight: Float[Array, "1"]
    bias: Float[Array, " out"]

    def __init__(self, in_ch, out_ch, kernel_size, style_dim, *, key, upsample=False):
        self.conv = ModulatedConv2d(in_ch, out_ch, kernel_size, style_dim, key=key, upsample=upsample)
        self.noise_weight = jnp.zeros((1,), jnp.float32)
        self.bias = jnp.zeros((out_ch,), jnp.float32)

    def __call__(self, x, style, noise: Float[Array, "H W"]):
        out = self.conv(x, style)
        out = out + self.noise_weight * noise[..., None]
        return fused_leaky_relu(out, self.bias)

    def state_keys(self) -> KeyMap:
        return {
            **nest("conv", lambda m: m.conv, self.conv.state_keys()),
            "noise.weight": lambda m: m.noise_weight,
            "activate.bias": lambda m: m.bias,
        }

    def constant_keys(self):
        return nest_constants("conv", self.conv.constant_keys())


def haar_transform(x: Float[Array, "H W C"]) -> Float[Array, "h w 4C"]:
    ll, lh, hl, hh = haar_kernels()
    return jnp.concatenate([upfirdn2d(x, k, down=2) for k in (ll, lh, hl, hh)], axis=-1)


def inverse_haar_transform(x: Float[Array, "H W 4C"]) -> Float[Array, "h w C"]:
    ll, lh, hl, hh = haar_kernels()
    parts = jnp.split(x, 4, axis=-1)
    kernels = (ll, -lh, -hl, hh)
    return sum(upfirdn2d(p, k, up=2, pad=(1, 0, 1, 0)) for p, k in zip(parts, kernels, strict=True))


def haar_constants(inverse: bool) -> dict[str, np.ndarray]:
    ll, lh, hl, hh = haar_kernels()
    if inverse:
        lh, hl = -lh, -hl
    return {"ll": ll, "lh": lh, "hl": hl, "hh": hh}


class ToRGB(eqx.Module):
    """1x1 modulated conv (no demodulation) to 4*out_ch Haar coefficients, plus the upsampled
    skip from the previous resolution (inverse Haar, 2x blur upsampling, Haar)."""

    conv: ModulatedConv2d
    bias: Float[Array, "1 C 1 1"]

    def __init__(self, in_ch, style_dim, out_ch, *, key):
        self.conv = ModulatedConv2d(in_ch, out_ch, 1, style_dim, key=key, demodulate=False)
        self.bias = jnp.zeros((1, out_ch, 1, 1), jnp.float32)

    def __call__(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias[0, :, 0, 0]
        if skip is not None:
            skip = inverse_haar_transform(skip)
            skip = upfirdn2d(skip, make_kernel() * 4.0, up=2, pad=(2, 1))
            out = out + haar_transform(skip)
        return out

    def state_keys(self) -> KeyMap:
        return {**nest("conv", lambda m: m.conv, self.conv.state_keys()), "bias": lambda m: m.bias}

    def constant_keys(self):
        return {
            "upsample.kernel": make_kernel() * 4.0,
            **nest_constants("iwt", haar_constants(True)),
            **nest_constants("dwt", haar_constants(False)),
        }


class FromRGB(eqx.Module):
    """The encoder's image pyramid step (use_wt=False): blur-downsample the condition image and
    add a 1x1 ConvLayer of it to the running features."""

    conv: ConvLayer

    def __init__(self, out_ch, in_ch, *, key):
        self.conv = ConvLayer(in_ch, out_ch, 1, key=key)

    def __call__(self, image, skip):
        image = upfirdn2d(image, make_kernel(), down=2, pad=(1, 1))
        return image, self.conv(image) + skip

    def state_keys(self) -> KeyMap:
        return nest("conv", lambda m: m.conv, self.conv.state_keys())

    def constant_keys(self):
        return {"downsample.kernel": make_kernel()}


class ConvBlock(eqx.Module):
    conv1: ConvLayer
    conv2: ConvLayer

    def __init__(self, in_ch, out_ch, *, key):
        k1, k2 = jax.random.split(key)
        self.conv1 = ConvLayer(in_ch, in_ch, 3, key=k1)
        self.conv2 = ConvLayer(in_ch, out_ch, 3, key=k2, downsample=True)

    def __call__(self, x):
        return self.conv2(self.conv1(x))

    def state_keys(self) -> KeyMap:
        return {
            **nest("conv1", lambda m: m.conv1, self.conv1.state_keys()),
            **nest("conv2", lambda m: m.conv2, self.conv2.state_keys()),
        }

    def constant_keys(self):
        return nest_constants("conv2", self.conv2.constant_keys())


def pixel_norm(x: Float[Array, " S"]) -> Float[Array, " S"]:
    return x * jax.lax.rsqrt(jnp.mean(x * x) + 1e-8)


class ViewDirNet(eqx.Module):
    """The official `viewdir_net`: Conv2d(1, 64, 4, 2, 1), LeakyReLU(0.2), Conv2d(64, C, 4, 2, 1)
    (plain PyTorch convolutions with bias). Maps a map of n.v values to colour-net features."""

    weight0: Float[Array, "hidden 1 4 4"]
    bias0: Float[Array, " hidden"]
    weight2: Float[Array, "out hidden 4 4"]
    bias2: Float[Array, " out"]

    def __init__(self, out_ch: int = 128, hidden: int = 64, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 4)

        # PyTorch's default Conv2d init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
        def uniform(k, shape, fan_in):
            bound = 1.0 / math.sqrt(fan_in)
            return jax.random.uniform(k, shape, jnp.float32, -bound, bound)

        self.weight0 = uniform(keys[0], (hidden, 1, 4, 4), 16)
        self.bias0 = uniform(keys[1], (hidden,), 16)
        self.weight2 = uniform(keys[2], (out_ch, hidden, 4, 4), hidden * 16)
        self.bias2 = uniform(keys[3], (out_ch,), hidden * 16)

    @staticmethod
    def random(out_ch: int = 128, hidden: int = 64, seed: int | np.random.Generator = 0) -> ViewDirNet:
        """PyTorch's default initialisation, drawn with numpy (see `DualStyleUNet.random`)."""
        rng = np.random.default_rng(seed)
        net = jax.eval_shape(lambda: ViewDirNet(out_ch, hidden, key=jax.random.key(0)))

        def uniform(shape, fan_in):
            bound = 1.0 / math.sqrt(fan_in)
            return jnp.asarray(rng.uniform(-bound, bound, shape).astype(np.float32))

        return eqx.tree_at(
            lambda m: (m.weight0, m.bias0, m.weight2, m.bias2),
            net,
            (uniform((hidden, 1, 4, 4), 16), uniform((hidden,), 16),
             uniform((out_ch, hidden, 4, 4), hidden * 16), uniform((out_ch,), hidden * 16)),
        )  # fmt: skip

    def __call__(self, viewdir_map: Float[Array, "H W 1"]) -> Float[Array, "h w C"]:
        h = conv2d(viewdir_map, self.weight0, stride=2, padding=1) + self.bias0
        h = jax.nn.leaky_relu(h, LEAKY_SLOPE)
        return conv2d(h, self.weight2, stride=2, padding=1) + self.bias2

    def state_keys(self) -> KeyMap:
        return {
            "0.weight": lambda m: m.weight0,
            "0.bias": lambda m: m.bias0,
            "2.weight": lambda m: m.weight2,
            "2.bias": lambda m: m.bias2,
        }

    def constant_keys(self):
        return {}
