"""The DualStyleUNet of Animatable Gaussians: a shared convolutional encoder of the pose map and
two StyleGAN2 decoders (front and back Gaussian maps), in Equinox.

Layer structure and state-dict names follow `network/styleunet/dual_styleunet.py` of the
official code, so an official `color_net` / `position_net` / `other_net` loads key by key.
At the official size (`StyleUNetConfig()`: 512 input, 1024 output, style 512, two mapping
layers) one network has 74.5M parameters.

Two extensions, both neutral at the official size, let the same module run small:
`channel_max` caps every stage's width (512 is the official cap), and the decoder block that
receives the view features is the one at `out_size / 4` pixels (block index
`log2(out_size) - 3 - log2(middle_size)`, which is the official hard-coded `i == 8` at 1024).
"""

from __future__ import annotations

import dataclasses
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from .layers import (
    ConvBlock,
    ConvLayer,
    EqualLinear,
    FromRGB,
    KeyMap,
    StyledConv,
    ToRGB,
    haar_constants,
    inverse_haar_transform,
    nest,
    nest_constants,
    pixel_norm,
    resize_bilinear,
)


@dataclasses.dataclass(frozen=True)
class StyleUNetConfig:
    """Sizes of a DualStyleUNet. The defaults are the official AvatarNet's."""

    inp_size: int = 512
    inp_ch: int = 3
    out_ch: int = 3
    out_size: int = 1024
    style_dim: int = 512
    n_mlp: int = 2
    middle_size: int = 8
    channel_multiplier: int = 2
    channel_max: int = 512
    lr_mlp: float = 0.01

    def __post_init__(self):
        for name in ("inp_size", "out_size", "middle_size"):
            v = getattr(self, name)
            if v < 4 or v & (v - 1):
                raise ValueError(f"StyleUNetConfig.{name} must be a power of two >= 4, got {v}")
        if self.middle_size != 8:
            # The official noise buffers are sized (idx + 8) // 2, which presumes an 8 px middle.
            raise ValueError("StyleUNetConfig.middle_size must be 8 (the official noise layout assumes it)")
        if not self.middle_size < self.inp_size // 2 < self.out_size:
            raise ValueError("need middle_size < inp_size / 2 < out_size")
        if self.out_size // 4 <= self.middle_size:
            raise ValueError(
                "out_size must be at least 4 * 2 * middle_size (the view-feature block needs it)"
            )

    def channels(self, res: int) -> int:
        cm = self.channel_multiplier
        table = {64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm}
        ch = 512 if res <= 32 else table.get(res, 16 * cm)
        return min(ch, self.channel_max)

    @property
    def log_size(self) -> int:
        return int(math.log2(self.out_size)) - 1

    @property
    def middle_log_size(self) -> int:
        return int(math.log2(self.middle_size))

    @property
    def num_layers(self) -> int:
        return (self.log_size - self.middle_log_size) * 2

    @property
    def view_block(self) -> int:
        """Decoder block (0-based) after which the view features are added (4 officially)."""
        return self.log_size - 2 - self.middle_log_size

    @property
    def view_feature_channels(self) -> int:
        return self.channels(2 ** (self.middle_log_size + 1 + self.view_block))

    def encoder_levels(self) -> list[int]:
        """log2 resolutions of the encoder's ConvBlock outputs, largest first."""
        return list(range(int(math.log2(self.inp_size)) - 2, self.middle_log_size - 1, -1))


class DualStyleUNet(eqx.Module):
    """pose map (inp_size^2 x inp_ch) -> (front, back) maps (out_size^2 x out_ch each)."""

    style_mlp: list[EqualLinear]
    conv_in: ConvLayer
    from_rgbs: list[FromRGB]
    cond_convs: list[ConvBlock]
    comb_convs: list[ConvLayer]
    convs1: list[StyledConv]
    convs2: list[StyledConv]
    to_rgbs1: list[ToRGB]
    to_rgbs2: list[ToRGB]
    noises: list[Float[Array, "1 1 r r"]]
    """Fixed noise maps (official buffers `noises.noise_i`; randomize_noise=False). Not trained."""
    config: StyleUNetConfig = eqx.field(static=True)

    def __init__(self, config: StyleUNetConfig = StyleUNetConfig(), *, key: PRNGKeyArray):
        c = config
        self.config = c
        keys = iter(jax.random.split(key, 256))
        self.style_mlp = [
            EqualLinear(c.style_dim, c.style_dim, key=next(keys), lr_mul=c.lr_mlp, activate=True)
            for _ in range(c.n_mlp)
        ]
        in_ch = c.channels(c.inp_size // 2)
        self.conv_in = ConvLayer(c.inp_ch, in_ch, 3, key=next(keys), downsample=True)
        comb = [ConvLayer(in_ch * 2, in_ch, 3, key=next(keys))]
        self.from_rgbs, self.cond_convs = [], []
        for level in c.encoder_levels():
            out_ch = c.channels(2**level)
            self.from_rgbs.append(FromRGB(in_ch, c.inp_ch, key=next(keys)))
            self.cond_convs.append(ConvBlock(in_ch, out_ch, key=next(keys)))
            wide = level > c.middle_log_size
            comb.append(ConvLayer(out_ch * 2 if wide else out_ch, out_ch, 3, key=next(keys)))
            in_ch = out_ch
        self.comb_convs = comb

        self.noises = []
        for idx in range(c.num_layers):
            res = 2 ** ((idx + 8) // 2)
            self.noises.append(jax.random.normal(next(keys), (1, 1, res, res)))

        self.convs1, self.convs2, self.to_rgbs1, self.to_rgbs2 = [], [], [], []
        in_ch = c.channels(c.middle_size)
        for level in range(c.middle_log_size + 1, c.log_size + 1):
            out_ch = c.channels(2**level)
            for convs, to_rgbs in ((self.convs1, self.to_rgbs1), (self.convs2, self.to_rgbs2)):
                convs.append(StyledConv(in_ch, out_ch, 3, c.style_dim, key=next(keys), upsample=True))
                convs.append(StyledConv(out_ch, out_ch, 3, c.style_dim, key=next(keys)))
                to_rgbs.append(ToRGB(out_ch, c.style_dim, c.out_ch * 4, key=next(keys)))
            in_ch = out_ch

    # ------------------------------------------------------------------ forward
    def style_latent(self) -> Float[Array, " S"]:
        """The style code every layer uses: the mapping MLP of the constant ones / sqrt(dim)
        input (AvatarNet's `*_style`; one code, so the latent is the same for all layers)."""
        s = jnp.ones((self.config.style_dim,), self.style_mlp[0].weight.dtype) / math.sqrt(
            self.config.style_dim
        )
        s = pixel_norm(s)
        for layer in self.style_mlp:
            s = layer(s)
        return s

    def encode(self, cond: Float[Array, "H W Ci"]) -> list[Array]:
        image = cond
        out = self.conv_in(image)
        feats = [out]
        for from_rgb, cond_conv in zip(self.from_rgbs, self.cond_convs, strict=True):
            image, out = from_rgb(image, out)
            out = cond_conv(out)
            feats.append(out)
        return feats

    def decode(self, feats, latent, convs, to_rgbs, view_feature=None) -> Float[Array, "H W C"]:
        noises = [jax.lax.stop_gradient(n[0, 0]) for n in self.noises]
        out, skip = None, None
        for block, to_rgb in enumerate(to_rgbs):
            if block == 0:
                out = self.comb_convs[-1](feats[-1])
            elif block < len(self.comb_convs):
                out = jnp.concatenate([out, feats[-1 - block]], axis=-1)
                out = self.comb_convs[-1 - block](out)
            out = convs[2 * block](out, latent, noises[2 * block])
            out = convs[2 * block + 1](out, latent, noises[2 * block + 1])
            skip = to_rgb(out, latent, skip)
            if view_feature is not None and block == self.config.view_block:
                out = out + resize_bilinear(view_feature, out.shape[0], out.shape[1])
        return inverse_haar_transform(skip)

    def __call__(
        self,
        cond: Float[Array, "H W Ci"],
        view_feature_front: Float[Array, "h w Cv"] | None = None,
        view_feature_back: Float[Array, "h w Cv"] | None = None,
    ) -> tuple[Float[Array, "O O C"], Float[Array, "O O C"]]:
        """The front and back output maps (the official output concatenates them on channels)."""
        c = self.config
        if cond.shape != (c.inp_size, c.inp_size, c.inp_ch):
            raise ValueError(
                f"DualStyleUNet expects a {(c.inp_size, c.inp_size, c.inp_ch)} map, got {cond.shape}"
            )
        feats = self.encode(cond)
        latent = self.style_latent()
        front = self.decode(feats, latent, self.convs1, self.to_rgbs1, view_feature_front)
        back = self.decode(feats, latent, self.convs2, self.to_rgbs2, view_feature_back)
        return front, back

    # ------------------------------------------------------------------ state dict layout
    def state_keys(self) -> KeyMap:
        keys: KeyMap = {}
        for i in range(len(self.style_mlp)):
            keys.update(nest(f"style.{i + 1}", lambda m, i=i: m.style_mlp[i], self.style_mlp[i].state_keys()))
        keys.update(nest("conv_in", lambda m: m.conv_in, self.conv_in.state_keys()))
        for name in ("from_rgbs", "cond_convs", "comb_convs", "convs1", "convs2", "to_rgbs1", "to_rgbs2"):
            for i, mod in enumerate(getattr(self, name)):
                keys.update(nest(f"{name}.{i}", lambda m, n=name, i=i: getattr(m, n)[i], mod.state_keys()))
        for i in range(len(self.noises)):
            keys[f"noises.noise_{i}"] = lambda m, i=i: m.noises[i]
        return keys

    def constant_keys(self) -> dict[str, np.ndarray]:
        consts = dict(nest_constants("conv_in", self.conv_in.constant_keys()))
        for name in ("from_rgbs", "cond_convs", "comb_convs", "convs1", "convs2", "to_rgbs1", "to_rgbs2"):
            for i, mod in enumerate(getattr(self, name)):
                consts.update(nest_constants(f"{name}.{i}", mod.constant_keys()))
        consts.update(nest_constants("iwt", haar_constants(True)))
        return consts

    @staticmethod
    def random(
        config: StyleUNetConfig = StyleUNetConfig(), seed: int | np.random.Generator = 0
    ) -> DualStyleUNet:
        """A network with the official initialisation (weights N(0, 1), EqualLinear weights
        N(0, 1) / lr_mul, modulation biases 1, other biases and noise gains 0, noise maps
        N(0, 1)), drawn with numpy: much faster than per-layer `jax.random` calls outside jit."""
        from .statedict import load_state_dict

        rng = np.random.default_rng(seed)
        skeleton = jax.eval_shape(lambda: DualStyleUNet(config, key=jax.random.key(0)))
        state = {}
        for key, get in skeleton.state_keys().items():
            shape = get(skeleton).shape
            if key.endswith("modulation.bias"):
                state[key] = np.ones(shape, np.float32)
            elif key.endswith("bias") or key.endswith("noise.weight"):
                state[key] = np.zeros(shape, np.float32)
            elif key.startswith("style."):
                state[key] = (rng.standard_normal(shape, np.float32) / config.lr_mlp).astype(np.float32)
            else:
                state[key] = rng.standard_normal(shape, np.float32)
        state.update(skeleton.constant_keys())
        return load_state_dict(skeleton, state)

    def scaled_output(self, factor: float) -> DualStyleUNet:
        """The same network with every ToRGB layer's weights times `factor` and its biases zeroed:
        outputs `factor` times the random network's pose-dependent part (0: `zero_output`)."""

        def scale(to_rgbs):
            return [
                eqx.tree_at(lambda t: (t.conv.weight, t.bias), t, (factor * t.conv.weight, jnp.zeros_like(t.bias)))
                for t in to_rgbs
            ]

        return eqx.tree_at(
            lambda n: (n.to_rgbs1, n.to_rgbs2), self, (scale(self.to_rgbs1), scale(self.to_rgbs2))
        )

    def zero_output(self) -> DualStyleUNet:
        """The same network with every ToRGB layer zeroed, so that it outputs exactly zero
        (and its ToRGB weights still get gradients): a network that starts at 'no change'."""

        def zero(to_rgbs):
            return [
                eqx.tree_at(
                    lambda t: (t.conv.weight, t.bias),
                    t,
                    (jnp.zeros_like(t.conv.weight), jnp.zeros_like(t.bias)),
                )
                for t in to_rgbs
            ]

        return eqx.tree_at(
            lambda n: (n.to_rgbs1, n.to_rgbs2), self, (zero(self.to_rgbs1), zero(self.to_rgbs2))
        )
