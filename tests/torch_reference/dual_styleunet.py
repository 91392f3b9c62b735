"""A PyTorch DualStyleUNet + AvatarNet built to the official Animatable Gaussians layout.

Written for the tests from the official architecture's description (module names, parameter
shapes, buffers, forward order); it is not the official code. Its `state_dict()` has exactly
the official keys and shapes, so checkpoints written from it have the official key layout.
NCHW, batch of one. `channel_max` and the view-feature block rule are the same extensions the
JAX port has (neutral at the official size).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def blur_kernel_2d():
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn(x, kernel, up=1, down=1, pad=(0, 0, 0, 0)):
    """Zero-insert by `up`, pad (x0, x1, y0, y1; negative crops), convolve with `kernel`
    (flipped for F.conv2d's correlation), decimate by `down`. x: (N, C, H, W)."""
    if len(pad) == 2:
        pad = (pad[0], pad[1], pad[0], pad[1])
    n, c, h, w = x.shape
    if up > 1:
        z = x.new_zeros(n, c, h * up, w * up)
        z[:, :, ::up, ::up] = x
        x = z
    x0, x1, y0, y1 = pad
    x = F.pad(x, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    x = x[:, :, max(-y0, 0) : x.shape[2] - max(-y1, 0), max(-x0, 0) : x.shape[3] - max(-x1, 0)]
    k = torch.flip(kernel, [0, 1])[None, None].repeat(c, 1, 1, 1).to(x)
    return F.conv2d(x, k, groups=c)[:, :, ::down, ::down]


def lrelu_act(x, bias=None):
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2)))
    return F.leaky_relu(x, 0.2) * math.sqrt(2.0)


def haar():
    lo = torch.full((1, 2), 1 / math.sqrt(2))
    hi = lo.clone()
    hi[0, 0] = -hi[0, 0]
    return lo.T * lo, hi.T * lo, lo.T * hi, hi.T * hi


class Blur(nn.Module):
    def __init__(self, pad, gain=1.0):
        super().__init__()
        self.register_buffer("kernel", blur_kernel_2d() * gain)
        self.pad = pad

    def forward(self, x):
        return upfirdn(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", blur_kernel_2d() * 4)

    def forward(self, x):
        return upfirdn(x, self.kernel, up=2, pad=(2, 1))


class Downsample(nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("kernel", blur_kernel_2d())

    def forward(self, x):
        return upfirdn(x, self.kernel, down=2, pad=(1, 1))


class Haar(nn.Module):
    def __init__(self):
        super().__init__()
        for name, k in zip(("ll", "lh", "hl", "hh"), haar(), strict=True):
            self.register_buffer(name, k)

    def forward(self, x):
        return torch.cat([upfirdn(x, getattr(self, n), down=2) for n in ("ll", "lh", "hl", "hh")], 1)


class InverseHaar(nn.Module):
    def __init__(self):
        super().__init__()
        ll, lh, hl, hh = haar()
        for name, k in zip(("ll", "lh", "hl", "hh"), (ll, -lh, -hl, hh), strict=True):
            self.register_buffer(name, k)

    def forward(self, x):
        parts = x.chunk(4, 1)
        return sum(
            upfirdn(p, getattr(self, n), up=2, pad=(1, 0, 1, 0))
            for p, n in zip(parts, ("ll", "lh", "hl", "hh"), strict=True)
        )


class EqualConv2d(nn.Module):
    def __init__(self, cin, cout, k, stride=1, padding=0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.stride, self.padding = stride, padding

    def forward(self, x):
        scale = 1 / math.sqrt(self.weight[0].numel())
        return F.conv2d(x, self.weight * scale, stride=self.stride, padding=self.padding)


class FusedLeakyReLU(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(c))

    def forward(self, x):
        return lrelu_act(x, self.bias)


class EqualLinear(nn.Module):
    def __init__(self, din, dout, bias_init=0.0, lr_mul=1.0, activation=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(dout, din) / lr_mul)
        self.bias = nn.Parameter(torch.full((dout,), float(bias_init)))
        self.lr_mul, self.activation = lr_mul, activation

    def forward(self, x):
        out = F.linear(x, self.weight * (self.lr_mul / math.sqrt(self.weight.shape[1])))
        if self.activation:
            return lrelu_act(out, self.bias * self.lr_mul)
        return out + self.bias * self.lr_mul


class PixelNorm(nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


def conv_layer(cin, cout, k, downsample=False):
    if downsample:
        p = 2 + (k - 1)
        return nn.Sequential(
            Blur(((p + 1) // 2, p // 2)), EqualConv2d(cin, cout, k, 2, 0), FusedLeakyReLU(cout)
        )
    return nn.Sequential(EqualConv2d(cin, cout, k, 1, k // 2), FusedLeakyReLU(cout))


class ModulatedConv2d(nn.Module):
    def __init__(self, cin, cout, k, style_dim, demodulate=True, upsample=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, cout, cin, k, k))
        self.modulation = EqualLinear(style_dim, cin, bias_init=1)
        self.demodulate, self.upsample, self.k = demodulate, upsample, k
        if upsample:
            self.blur = Blur((1, 1), gain=4)

    def forward(self, x, style):
        # The fused grouped-convolution formulation, as in the official code.
        b, cin, h, w = x.shape
        s = self.modulation(style).view(b, 1, cin, 1, 1)
        weight = self.weight * s / math.sqrt(cin * self.k * self.k)
        if self.demodulate:
            weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(b, -1, 1, 1, 1)
        cout = weight.shape[1]
        x = x.reshape(1, b * cin, h, w)
        if self.upsample:
            wt = weight.transpose(1, 2).reshape(b * cin, cout, self.k, self.k)
            out = F.conv_transpose2d(x, wt, stride=2, padding=0, groups=b)
            return self.blur(out.view(b, cout, out.shape[2], out.shape[3]))
        out = F.conv2d(x, weight.view(b * cout, cin, self.k, self.k), padding=self.k // 2, groups=b)
        return out.view(b, cout, out.shape[2], out.shape[3])


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x, noise):
        return x + self.weight * noise


class StyledConv(nn.Module):
    def __init__(self, cin, cout, k, style_dim, upsample=False):
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, k, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(cout)

    def forward(self, x, style, noise):
        return self.activate(self.noise(self.conv(x, style), noise))


class ToRGB(nn.Module):
    def __init__(self, cin, style_dim, cout):
        super().__init__()
        self.upsample = Upsample()
        self.iwt = InverseHaar()
        self.dwt = Haar()
        self.conv = ModulatedConv2d(cin, cout, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, cout, 1, 1))

    def forward(self, x, style, skip=None):
        out = self.conv(x, style) + self.bias
        if skip is not None:
            out = out + self.dwt(self.upsample(self.iwt(skip)))
        return out


class FromRGB(nn.Module):
    def __init__(self, cout, cin):
        super().__init__()
        self.downsample = Downsample()
        self.conv = conv_layer(cin, cout, 1)

    def forward(self, image, skip):
        image = self.downsample(image)
        return image, self.conv(image) + skip


class ConvBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = conv_layer(cin, cin, 3)
        self.conv2 = conv_layer(cin, cout, 3, downsample=True)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class DualStyleUNet(nn.Module):
    def __init__(
        self,
        inp_size=512,
        inp_ch=3,
        out_ch=3,
        out_size=1024,
        style_dim=512,
        n_mlp=2,
        middle_size=8,
        channel_multiplier=2,
        channel_max=512,
        lr_mlp=0.01,
    ):
        super().__init__()
        self.style_dim = style_dim
        cm = channel_multiplier
        table = {64: 256 * cm, 128: 128 * cm, 256: 64 * cm, 512: 32 * cm}

        def ch(res):
            return min(512 if res <= 32 else table.get(res, 16 * cm), channel_max)

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)
        ])  # fmt: skip
        log_size = int(math.log2(out_size)) - 1
        mid = int(math.log2(middle_size))
        cin = ch(inp_size // 2)
        self.comb_convs = nn.ModuleList([conv_layer(cin * 2, cin, 3)])
        self.conv_in = conv_layer(inp_ch, cin, 3, downsample=True)
        self.from_rgbs = nn.ModuleList()
        self.cond_convs = nn.ModuleList()
        for i in range(int(math.log2(inp_size)) - 2, mid - 1, -1):
            cout = ch(2**i)
            self.from_rgbs.append(FromRGB(cin, inp_ch))
            self.cond_convs.append(ConvBlock(cin, cout))
            self.comb_convs.append(conv_layer(cout * 2 if i > mid else cout, cout, 3))
            cin = cout
        self.convs1, self.convs2 = nn.ModuleList(), nn.ModuleList()
        self.to_rgbs1, self.to_rgbs2 = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        self.num_layers = (log_size - mid) * 2
        for idx in range(self.num_layers):
            r = 2 ** ((idx + 8) // 2)
            self.noises.register_buffer(f"noise_{idx}", torch.randn(1, 1, r, r))
        cin = ch(middle_size)
        for i in range(mid + 1, log_size + 1):
            cout = ch(2**i)
            for convs, rgbs in ((self.convs1, self.to_rgbs1), (self.convs2, self.to_rgbs2)):
                convs.append(StyledConv(cin, cout, 3, style_dim, upsample=True))
                convs.append(StyledConv(cout, cout, 3, style_dim))
                rgbs.append(ToRGB(cout, style_dim, out_ch * 4))
            cin = cout
        self.iwt = InverseHaar()
        self.view_step = 2 * (log_size - 2 - mid)  # the official `i == 8` at out_size 1024

    def forward(self, style_in, cond, view1=None, view2=None):
        latent = self.style(style_in)
        noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        feats = [self.conv_in(cond)]
        image, out = cond, feats[0]
        for from_rgb, conv in zip(self.from_rgbs, self.cond_convs, strict=True):
            image, out = from_rgb(image, out)
            out = conv(out)
            feats.append(out)
        images = []
        for convs, rgbs, view in ((self.convs1, self.to_rgbs1, view1), (self.convs2, self.to_rgbs2, view2)):
            skip = None
            for j, rgb in enumerate(rgbs):
                i = 2 * j
                if i == 0:
                    out = self.comb_convs[-1](feats[-1])
                elif i < 2 * len(self.comb_convs):
                    out = self.comb_convs[-1 - j](torch.cat([out, feats[-1 - j]], 1))
                out = convs[i](out, latent, noise[i])
                out = convs[i + 1](out, latent, noise[i + 1])
                skip = rgb(out, latent, skip)
                if view is not None and i == self.view_step:
                    out = out + F.interpolate(view, out.shape[-2:], mode="bilinear")
            images.append(self.iwt(skip))
        return torch.cat(images, 1)


class AvatarNets(nn.Module):
    """The network part of the official AvatarNet (its whole state dict)."""

    def __init__(self, inp_size=512, out_size=1024, style_dim=512, channel_max=512, viewdir_hidden=64):
        super().__init__()
        kw = dict(
            inp_size=inp_size,
            inp_ch=3,
            out_size=out_size,
            style_dim=style_dim,
            n_mlp=2,
            channel_max=channel_max,
        )
        self.color_net = DualStyleUNet(out_ch=3, **kw)
        self.position_net = DualStyleUNet(out_ch=3, **kw)
        self.other_net = DualStyleUNet(out_ch=8, **kw)
        view_ch = self.color_net.convs1[2 * (self.color_net.view_step // 2)].activate.bias.shape[0]
        self.viewdir_net = nn.Sequential(
            nn.Conv2d(1, viewdir_hidden, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(viewdir_hidden, view_ch, 4, 2, 1),
        )
        self.style_dim = style_dim

    def style_input(self):
        return torch.ones(1, self.style_dim) / math.sqrt(self.style_dim)

    def maps(self, pose_map, front_viewdirs=None, back_viewdirs=None):
        """(position, other, colour) output maps of one pose map (3, H, W), each (C, S, 2S)
        with front | back side by side, as AvatarNet.get_positions/get_others/get_colors do."""
        s = self.style_input()
        fv = self.viewdir_net(front_viewdirs) if front_viewdirs is not None else None
        bv = self.viewdir_net(back_viewdirs) if back_viewdirs is not None else None
        out = []
        for net, view in (
            (self.position_net, (None, None)),
            (self.other_net, (None, None)),
            (self.color_net, (fv, bv)),
        ):
            m = net(s, pose_map[None], *view)
            c = m.shape[1] // 2
            out.append(torch.cat([m[:, :c], m[:, c:]], 3)[0])
        return out
