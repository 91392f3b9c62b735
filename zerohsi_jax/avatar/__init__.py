"""Animatable Gaussians avatar (Li et al., CVPR 2024) in Equinox: ZeroHSI's map
G_H = A(r, phi, Theta; T) of equation 6.
"""

from .builtin import builtin_avatar
from .io import AvatarFileError, load_avatar, save_avatar
from .model import AnimatableAvatar, AvatarAux, AvatarTemplate
from .styleunet import DualStyleUNet, StyleUNetConfig

__all__ = [
    "AnimatableAvatar",
    "AvatarAux",
    "AvatarFileError",
    "AvatarTemplate",
    "DualStyleUNet",
    "StyleUNetConfig",
    "builtin_avatar",
    "load_avatar",
    "save_avatar",
]
