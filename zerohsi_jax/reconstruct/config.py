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
    """An immutable {term name: weight}, so that a frozen config stays a value. The compiled
    programs get the weights inside the stage's `losses.Objective`, which is what hashes them."""

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

    def __eq__(self, other):
        return isinstance(other, Mapping) and dict(self._items) == dict(other.items())

    def __repr__(self):
        return f"LossWeights({dict(self._items)})"


def _weights(**kw):
    # Left out of the config's hash (a mapping does not hash; equality still compares it): a
    # config is a static argument of the compiled programs, and the weights reach them in the
    # stage's `losses.Objective`.
    return dataclasses.field(default_factory=lambda: LossWeights(kw), hash=False,
                             metadata={"help": "loss term -> weight"})


class _ImmutableWeights:
    """Mixin: a dict given for `loss_weights` becomes a LossWeights."""

    def __post_init__(self):
        if not isinstance(self.loss_weights, LossWeights):
            object.__setattr__(self, "loss_weights", LossWeights(self.loss_weights))


@dataclasses.dataclass(frozen=True)
class CameraTrackingConfig(_ImmutableWeights):
    iterations: int = _help("Adam iterations per frame", default=30)
    learning_rate: float = _help("Adam learning rate of the relative camera transform", default=1e-3)
    loss: str = _help("photometric error on the static background: 'l2' (Algorithm 1) or 'l1'", default="l2")
    loss_weights: Mapping[str, float] = _weights(photometric=1.0)
    enabled: bool = _help("track the camera (False keeps the initial camera: an ablation of ours, not the "
                          "paper's)", default=True)
    pivot: str = _help("where the relative transform T of eq. 7 rotates: 'world' (T applied to the scene in "
                       "world coordinates, as the paper writes G_S(T)) or 'camera' (about the camera of "
                       "frame t-1; not in the paper)", default="world")


@dataclasses.dataclass(frozen=True)
class HSIFitConfig(_ImmutableWeights):
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
    adam_state: str = _help("Adam between frames: 'restart' (a fresh Adam every frame) or 'carry' (moments and step "
                            "count continue from frame t-1; the root-only warm-up and the colour schedule still "
                            "restart); the paper does not say", default="restart")
    l2_kind: str = _help("the 'L2' of eqs. 11 and 13: 'squared' (squared Euclidean distance) or 'euclidean' "
                         "(the distance); the paper does not say", default="squared")
    network_every: int = _help(
        "evaluate the avatar's pose-driven networks (position, other, colour) every k-th iteration: 1 every "
        "iteration (the paper), k > 1 every k-th, 0 once per frame; between evaluations their outputs are held "
        "and only skinning and the root transform run (the pose gradient flows through the skinning), while the "
        "colour net is still evaluated on its fine-tuning steps (color_every)", default=1)
    network_dtype: str = _help("precision of the avatar's networks: 'float32' (the paper) or 'bfloat16' (weights "
                               "and activations; outputs in float32)", default="float32")
    bind_scene: bool = _help(
        "project, colour and bin the static scene once per frame and merge the moving Gaussians into its tile "
        "lists every iteration (the camera is fixed during the HSI fit; equals the full render up to float "
        "round-off); False renders everything every iteration", default=False)


@dataclasses.dataclass(frozen=True)
class RefineConfig(_ImmutableWeights):
    iterations: int = _help("Adam iterations over the whole sequence", default=1000)
    learning_rate: float = _help("Adam learning rate of VPoser latents, root translation and orientation",
                                 default=5e-2)
    loss_weights: Mapping[str, float] = _weights(fit=1.0, physics=1e-3)
    contact_weight: float = _help("lambda_contact of eq. S4", default=1.0)
    smooth_weight_static: float = _help("lambda_smooth of eq. S4 without a moving object", default=0.3)
    smooth_weight_dynamic: float = _help("lambda_smooth of eq. S4 with a moving object", default=0.1)
    contact_epsilon: float = _help("contact distance epsilon of eq. S1 in metres (not given in the paper)",
                                   default=0.05)
    max_contact_points: int | None = _help(
        "object Gaussian centres the contact loss searches: null for all of them (the paper's set), or a "
        "random subsample of this size whose pair count is scaled back to the full sets' #C_t (its nearest "
        "pair is farther than the full sets', so the loss comes out larger by that ratio)", default=None)
    max_hand_vertices: int | None = _help(
        "hand vertices the contact loss searches: null for all (the paper's set), or every k-th per hand "
        "(count scaled as above)", default=None)
    contact_chunk: int = _help("object centres searched at a time by the contact loss (memory only)", default=256)
    fit_distance: str = _help("the 'L2' of eq. 15: 'squared' (mean squared joint distance) or 'euclidean' "
                              "(mean joint distance); the paper does not say", default="squared")
    latent_init: str = _help("where the VPoser latents start: 'encoder_mean' (the encoder's mean of the stage-2 "
                             "pose) or 'zeros' (VPoser's mean pose); the paper does not say", default="encoder_mean")
    dynamic_threshold: float = _help(
        "an object whose pose changes by more than this (largest change of a rotation entry or of a "
        "translation in metres between frames) makes the sequence dynamic (lambda_smooth 0.1, not 0.3)",
        default=1e-4)
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
    tile_size: int = _help(
        "rasterizer tile side in pixels: 16 as the original's rasterizer (INRIA's 16x16 blocks); the image is the "
        "same at any size, and smaller tiles make the compositing cheaper where Gaussians cover few pixels "
        "(8 at the demo's 64-128 px: see the README's table of choices)", default=16)
    background: tuple[float, float, float] = _help(
        "background colour (r, g, b in [0, 1]) of every render: the initial frame given to the video generator "
        "and the fit, which must see the background the generator saw", default=(0.0, 0.0, 0.0))

    def __post_init__(self):
        if self.mode not in ("sequential", "frame_parallel"):
            raise ValueError(f"mode must be 'sequential' or 'frame_parallel', got {self.mode!r}")
        if isinstance(self.tile_size, bool) or not isinstance(self.tile_size, int) or self.tile_size <= 0:
            raise ValueError(f"tile_size must be a positive int (pixels), got {self.tile_size!r}")
        if self.hsi.root_only_iterations > self.hsi.iterations:
            raise ValueError("hsi.root_only_iterations exceeds hsi.iterations")
        if self.camera.loss not in ("l1", "l2"):
            raise ValueError(f"camera.loss must be 'l1' or 'l2', got {self.camera.loss!r}")
        choices = {
            "camera.pivot": (self.camera.pivot, ("world", "camera")),
            "hsi.l2_kind": (self.hsi.l2_kind, ("squared", "euclidean")),
            "hsi.adam_state": (self.hsi.adam_state, ("restart", "carry")),
            "hsi.network_dtype": (self.hsi.network_dtype, ("float32", "bfloat16")),
            "refine.fit_distance": (self.refine.fit_distance, ("squared", "euclidean")),
            "refine.latent_init": (self.refine.latent_init, ("encoder_mean", "zeros")),
        }
        for key, (value, allowed) in choices.items():
            if value not in allowed:
                raise ValueError(f"{key} must be one of {list(allowed)}, got {value!r}")


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
