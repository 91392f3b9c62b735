"""Schedules and loss weights of the three stages. Every number of the paper is a default here.

Paper defaults (section 3.3-3.4, appendix C.2 and D): camera tracking 30 it/frame at lr 1e-3;
HSI fit 300 it/frame at lr 1e-2, the first 30 on root translation and orientation only,
L = 0.9 L1 + 0.1 D-SSIM + 1e-3 L_center + 1e-3 L_depth, colour net fine-tuned every 5th step at
lr 1e-5; refinement 1000 it at lr 5e-2 with physics weight 1e-3, contact weight 1, smoothness
0.3 (static) or 0.1 (dynamic).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping


def _help(text: str, **kw):
    return dataclasses.field(metadata={"help": text}, **kw)


class LossWeights(Mapping):
    """An immutable, hashable {term name: weight} (configs are static arguments of compiled
    programs, so everything in them must hash)."""

    def __init__(self, items=()):
        self._items = tuple(sorted((str(k), float(v)) for k, v in dict(items).items()))

    def __getitem__(self, key):
        for k, v in self._items:
            if k == key:
                return v
        raise KeyError(key)

    def __iter__(self):
        return (k for k, _ in self._items)

    def __len__(self):
        return len(self._items)

    def __hash__(self):
        return hash(self._items)

    def __eq__(self, other):
        return isinstance(other, Mapping) and dict(self._items) == dict(other.items())

    def __repr__(self):
        return f"LossWeights({dict(self._items)})"


def _weights(**kw):
    return dataclasses.field(default_factory=lambda: LossWeights(kw), metadata={"help": "loss term -> weight"})


class _HashableWeights:
    """Mixin: a dict given for `loss_weights` becomes a LossWeights."""

    def __post_init__(self):
        if not isinstance(self.loss_weights, LossWeights):
            object.__setattr__(self, "loss_weights", LossWeights(self.loss_weights))


@dataclasses.dataclass(frozen=True)
class CameraTrackingConfig(_HashableWeights):
    iterations: int = _help("Adam iterations per frame", default=30)
    learning_rate: float = _help("Adam learning rate of the relative camera transform", default=1e-3)
    loss: str = _help("photometric error on the static background: 'l2' (Algorithm 1) or 'l1'", default="l2")
    loss_weights: Mapping[str, float] = _weights(photometric=1.0)
    enabled: bool = _help("track the camera (False keeps the initial camera: the paper's ablation)",
                          default=True)


@dataclasses.dataclass(frozen=True)
class HSIFitConfig(_HashableWeights):
    iterations: int = _help("Adam iterations per frame", default=300)
    root_only_iterations: int = _help("first iterations that move only root translation and orientation",
                                      default=30)
    learning_rate: float = _help("Adam learning rate of human and object pose", default=1e-2)
    ssim_weight: float = _help("lambda of eq. 10: L_rgb = (1 - lambda) L1 + lambda D-SSIM", default=0.1)
    loss_weights: Mapping[str, float] = _weights(rgb=1.0, object_center=1e-3, object_depth=1e-3)
    color_learning_rate: float = _help("Adam learning rate of the avatar's colour net", default=1e-5)
    color_every: int = _help("fine-tune the colour net every k-th step (0: never)", default=5)
    fit_body_pose: bool = _help("optimise the body pose (False: root and object only, the paper's ablation)",
                                default=True)
    fit_object: bool = _help("optimise the object's 6-DoF pose", default=True)


@dataclasses.dataclass(frozen=True)
class RefineConfig(_HashableWeights):
    iterations: int = _help("Adam iterations over the whole sequence", default=1000)
    learning_rate: float = _help("Adam learning rate of VPoser latents, root translation and orientation",
                                 default=5e-2)
    loss_weights: Mapping[str, float] = _weights(fit=1.0, physics=1e-3)
    contact_weight: float = _help("lambda_contact of eq. S4", default=1.0)
    smooth_weight_static: float = _help("lambda_smooth of eq. S4 without a moving object", default=0.3)
    smooth_weight_dynamic: float = _help("lambda_smooth of eq. S4 with a moving object", default=0.1)
    contact_epsilon: float = _help("contact distance epsilon of eq. S1 in metres (not given in the paper)",
                                   default=0.05)
    max_contact_points: int = _help("object Gaussian centres used by the contact loss (subsampled)",
                                    default=256)
    max_hand_vertices: int = _help("hand vertices used by the contact loss (subsampled evenly per hand)",
                                   default=256)
    enabled: bool = _help("run the refinement stage", default=True)


@dataclasses.dataclass(frozen=True)
class ReconstructConfig:
    camera: CameraTrackingConfig = dataclasses.field(default_factory=CameraTrackingConfig)
    hsi: HSIFitConfig = dataclasses.field(default_factory=HSIFitConfig)
    refine: RefineConfig = dataclasses.field(default_factory=RefineConfig)
    mode: str = _help("'sequential' (the paper) or 'frame_parallel' (experimental: all frames at once "
                      "after a short sequential warm-up)", default="sequential")
    parallel_warmup_frames: int = _help("sequential frames before the frame-parallel fit", default=2)
    tile_capacity: int | None = _help("rasterizer Gaussians per tile; None measures it on the first frame",
                                      default=None)
    background: tuple[float, float, float] = _help("render background colour", default=(0.0, 0.0, 0.0))

    def __post_init__(self):
        if self.mode not in ("sequential", "frame_parallel"):
            raise ValueError(f"mode must be 'sequential' or 'frame_parallel', got {self.mode!r}")
        if self.hsi.root_only_iterations > self.hsi.iterations:
            raise ValueError("hsi.root_only_iterations exceeds hsi.iterations")
        if self.camera.loss not in ("l1", "l2"):
            raise ValueError(f"camera.loss must be 'l1' or 'l2', got {self.camera.loss!r}")


def paper_schedule() -> ReconstructConfig:
    """The iteration counts of the paper (the defaults)."""
    return ReconstructConfig()


def quick_schedule() -> ReconstructConfig:
    """A short schedule for CPU demos: fewer iterations, the same losses and learning rates
    except a larger camera step (fewer iterations to converge)."""
    return ReconstructConfig(
        camera=CameraTrackingConfig(iterations=15, learning_rate=3e-3),
        hsi=HSIFitConfig(iterations=50, root_only_iterations=10),
        refine=RefineConfig(iterations=300),
    )
