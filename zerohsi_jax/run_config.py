"""The run config: one YAML file describing a reconstruction of one's own scene and videos.

Every field has a default and a one-line description (`zerohsi-jax config --example` prints them
all). Paths are relative to the config file. Loading validates names, types and ranges (`check_values`:
no NaN, no negative iteration count or learning rate, loss weights naming known terms, one mask
file per video) and says which key is wrong and what it should be; `check_files` checks that the
files a command needs exist. Every command runs both before any work, and `config --check` does.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from pathlib import Path

import yaml

from .config_values import ConfigError, in_range, range_problems
from .errors import MissingFileError
from .reconstruct.config import ReconstructConfig
from .reconstruct.losses import CAMERA_TERMS, HSI_TERMS, REFINE_TERMS


def _f(help_text: str, **kw):
    return dataclasses.field(metadata={"help": help_text}, **kw)


@dataclasses.dataclass(frozen=True)
class SceneSection:
    ply: str = _f("the static scene as an INRIA 3DGS .ply file", default="scene.ply")


@dataclasses.dataclass(frozen=True)
class ObjectSection:
    ply: str | None = _f("the dynamic object as a 3DGS .ply (null for a static scenario)", default=None)
    translation: tuple[float, float, float] = _f("initial object centre in the world (metres)", default=(0.0, 0.0, 0.0))
    rotation: tuple[float, float, float] = _f("initial object orientation, axis-angle (radians)",
                                              default=(0.0, 0.0, 0.0))


@dataclasses.dataclass(frozen=True)
class HumanSection:
    smplx_model: str = _f("SMPL-X .npz model file, or 'synthetic' for the built-in synthetic body",
                          default="synthetic")
    avatar: str = _f("converted Animatable Gaussians avatar file, or 'builtin'", default="builtin")
    avatar_gaussians: int = _f("Gaussians of the built-in avatar", default=4000)
    avatar_size: str = _f("network size of the built-in avatar: 'tiny', 'small' or 'medium'", default="small")
    vposer: str = _f("VPoser file (python -m converters.vposer_to_eqx), or 'synthetic' for the demo prior "
                     "(only meaningful with the synthetic body)", default="synthetic")
    transl: tuple[float, float, float] = _f("initial root translation r_0 (metres)", default=(0.0, 1.2, 0.0))
    global_orient: tuple[float, float, float] = _f("initial global orientation phi_0, axis-angle",
                                                   default=(0.0, 0.0, 0.0))
    body_pose: str | None = _f("initial body pose Theta_0: a .npy of 63 axis-angle values; null for a "
                               "standing pose", default=None)


@dataclasses.dataclass(frozen=True)
class VideoSection:
    paths: tuple[str, ...] = _f("reference videos of the same initial state, one per seed (mp4/webm/folder)",
                                default=("video.mp4",))
    stride: int = _f("keep every stride-th frame (the paper keeps 51 of 153: 3)", default=3)
    max_frames: int | None = _f("at most this many kept frames", default=51)
    masks: tuple[str, ...] | None = _f("per video, a .npz with 'human' and 'object' (T, H, W) masks; null runs SAM2",
                                       default=None)
    pose_estimates: tuple[str, ...] | None = _f("per video, a .npy (T, 63) of per-frame body pose estimates from "
                                                "any estimator; null starts every frame from the previous",
                                                default=None)


@dataclasses.dataclass(frozen=True)
class SegmentSection:
    checkpoint: str | None = _f("SAM2 checkpoint (e.g. sam2.1_hiera_tiny.pt)", default=None)
    model_config: str | None = _f("SAM2 config; null infers it from the checkpoint name", default=None)
    device: str = _f("'auto' (GPU when present), 'cpu' or 'cuda'", default="auto")
    num_points: int = _f("farthest-point prompts per object on the initial frame", default=5)
    num_negative: int = _f("negative prompts on the other object", default=0)


@dataclasses.dataclass(frozen=True)
class InitFrameSection:
    width: int = _f("width of the image sent to the video generator", default=1280)
    height: int = _f("height of the image sent to the video generator", default=720)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    scene: SceneSection = dataclasses.field(default_factory=SceneSection)
    object: ObjectSection = dataclasses.field(default_factory=ObjectSection)
    human: HumanSection = dataclasses.field(default_factory=HumanSection)
    camera: str = _f("camera JSON of the initial view T_0 (viewmat or eye/target, intrinsics, size)",
                     default="camera.json")
    render_size: tuple[int, int] | None = _f("[width, height] the fit renders at (null: the camera's)", default=None)
    video: VideoSection = dataclasses.field(default_factory=VideoSection)
    prompt: str = _f("the interaction, as given to the video generator", default="")
    segment: SegmentSection = dataclasses.field(default_factory=SegmentSection)
    init_frame: InitFrameSection = dataclasses.field(default_factory=InitFrameSection)
    reconstruct: ReconstructConfig = dataclasses.field(default_factory=ReconstructConfig)
    output: str = _f("run folder (relative to this file)", default="runs/zerohsi")
    base_dir: str = dataclasses.field(default=".", metadata={"help": None})

    def path(self, p: str | None) -> Path | None:
        """A config path resolved against the config file's folder."""
        if p is None:
            return None
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir) / q


def with_absolute_paths(cfg: RunConfig) -> RunConfig:
    """The same config with every file path made absolute (what a run folder stores, so that the
    stored config works from anywhere)."""
    keep = ("synthetic", "builtin")
    absolute = lambda p: None if p is None else (p if p in keep else str(cfg.path(p).resolve()))  # noqa: E731
    many = lambda ps: None if ps is None else tuple(absolute(p) for p in ps)  # noqa: E731
    r = dataclasses.replace
    return r(
        cfg,
        scene=r(cfg.scene, ply=absolute(cfg.scene.ply)),
        object=r(cfg.object, ply=absolute(cfg.object.ply)),
        human=r(cfg.human, smplx_model=absolute(cfg.human.smplx_model), avatar=absolute(cfg.human.avatar),
                vposer=absolute(cfg.human.vposer), body_pose=absolute(cfg.human.body_pose)),
        camera=absolute(cfg.camera),
        video=r(cfg.video, paths=many(cfg.video.paths), masks=many(cfg.video.masks),
                pose_estimates=many(cfg.video.pose_estimates)),
        segment=r(cfg.segment, checkpoint=absolute(cfg.segment.checkpoint)),
        output=absolute(cfg.output),
    )


# ------------------------------------------------------------------------------- loading


def _check_value(value, annotation, where: str):
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _check_value(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: may not be null")
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a section (mapping), got {type(value).__name__}")
        return _build(annotation, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value] if args and args[-1] is Ellipsis else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if args and args[-1] is Ellipsis:
            return tuple(_check_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected a list of {len(args)} values, got {len(value)}")
        return tuple(_check_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is not None and issubclass(origin, Mapping) or annotation is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping of names to numbers, got {value!r}")
        return {str(k): _check_value(v, float, f"{where}.{k}") for k, v in value.items()}
    if annotation is float:
        if isinstance(value, str):
            # YAML 1.1 reads 1e-3 (no dot) as text; the number it means is meant.
            try:
                return float(value.strip())
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return in_range(where, float(value))
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return in_range(where, value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return value
    return value


def _build(cls, data: Mapping, where: str):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("help", "") is not None}
    unknown = [k for k in data if k not in fields]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), list(fields), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; known keys: {', '.join(fields)}"
        raise ConfigError(f"{where}: unknown key '{k}'{hint}")
    values = {name: _check_value(v, hints[name], f"{where}.{name}" if where else name) for name, v in data.items()}
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where or 'config'}: {err}") from None


def load_run_config(path) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"config file {path} does not exist (zerohsi-jax config --example > {path} writes one)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        cfg = _build(RunConfig, data, "")
        check_values(cfg)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    return dataclasses.replace(cfg, base_dir=str(path.parent.resolve()))


def value_problems(cfg, prefix: str = "") -> list[str]:
    """What is out of range in a config (a `RunConfig`, or any section with `prefix` its key),
    one 'key: what it must be' per problem."""
    problems = range_problems(cfg, prefix)
    if isinstance(cfg, RunConfig):
        for key, allowed in _CHOICES.items():
            value = cfg
            for part in key.split("."):
                value = getattr(value, part)
            if value not in allowed:
                problems.append(f"{key}: must be one of {list(allowed)}, got {value!r}")
        problems += _loss_term_problems(cfg.reconstruct) + _per_video_problems(cfg.video)
    return problems


_CHOICES = {"human.avatar_size": ("tiny", "small", "medium"), "segment.device": ("auto", "cpu", "cuda")}


def check_values(cfg, prefix: str = "") -> None:
    """`ConfigError` naming every key out of range (see `value_problems`)."""
    problems = value_problems(cfg, prefix)
    if problems:
        raise ConfigError("; ".join(problems))


def _loss_term_problems(rc: ReconstructConfig) -> list[str]:
    """Loss weights of the command line's runs must name terms of the built-in tables (the Python API
    checks them against the tables it is given)."""
    problems = []
    for stage, table in (("camera", CAMERA_TERMS), ("hsi", HSI_TERMS), ("refine", REFINE_TERMS)):
        for name in getattr(rc, stage).loss_weights:
            if name not in table:
                close = difflib.get_close_matches(name, list(table), n=1)
                hint = f"did you mean '{close[0]}'?" if close else f"the terms are {', '.join(sorted(table))}"
                problems.append(f"reconstruct.{stage}.loss_weights.{name}: unknown loss term ({hint})")
    return problems


def _per_video_problems(video: VideoSection) -> list[str]:
    problems = []
    for name in ("masks", "pose_estimates"):
        files = getattr(video, name)
        if files is not None and len(files) != len(video.paths):
            problems.append(f"video.{name}: {len(files)} file(s) for {len(video.paths)} video(s) in video.paths; "
                            "give one per video, in the same order")
    return problems


# ------------------------------------------------------------------------------- files

COMMANDS = ("init-frame", "segment", "reconstruct")


def needed_files(cfg: RunConfig, command: str = "reconstruct") -> list[tuple[str, Path]]:
    """(key, path) of every file `command` reads: the scene, object, camera and human files for all
    of them; the videos, and masks, pose estimates or the SAM2 checkpoint, for segment and reconstruct."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")
    files = [("scene.ply", cfg.scene.ply), ("object.ply", cfg.object.ply), ("camera", cfg.camera),
             ("human.body_pose", cfg.human.body_pose)]
    files += [(f"human.{k}", getattr(cfg.human, k)) for k, generated in
              (("smplx_model", "synthetic"), ("avatar", "builtin"), ("vposer", "synthetic"))
              if getattr(cfg.human, k) != generated]
    if command in ("segment", "reconstruct"):
        v = cfg.video
        files += [(f"video.paths[{i}]", p) for i, p in enumerate(v.paths)]
        if command == "segment" or v.masks is None:
            files.append(("segment.checkpoint", cfg.segment.checkpoint))
        if command == "reconstruct":
            files += [(f"video.masks[{i}]", p) for i, p in enumerate(v.masks or ())]
            files += [(f"video.pose_estimates[{i}]", p) for i, p in enumerate(v.pose_estimates or ())]
    return [(key, cfg.path(p)) for key, p in files if key == "segment.checkpoint" or p is not None]


def check_files(cfg: RunConfig, command: str = "reconstruct", source=None) -> None:
    """`MissingFileError` naming every file `command` needs that is not there (by key and path)."""
    missing = []
    for key, path in needed_files(cfg, command):
        if path is None:
            missing.append(f"{key} is null (SAM2 makes the masks when video.masks is null: give its checkpoint, "
                           "or the masks)")
        elif not path.exists():
            missing.append(f"{key}: {path} does not exist")
    if missing:
        where = f"{source}: " if source is not None else ""
        later = "" if command == "init-frame" else (
            f" (checked for `{command}`; `config --check CONFIG --for init-frame` checks what init-frame needs)")
        raise MissingFileError(f"{where}{'; '.join(missing)}; fix the paths (relative to the config file){later}")


def load_checked_config(path, command: str = "reconstruct") -> RunConfig:
    """`load_run_config` and `check_files` for `command`: what every command does before any work."""
    cfg = load_run_config(path)
    check_files(cfg, command, source=path)
    return cfg


def run_config_to_dict(cfg) -> dict:
    """The config as plain YAML-able data (what a run folder stores as resolved config)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: run_config_to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)
                if f.metadata.get("help", "") is not None}
    if isinstance(cfg, Mapping):
        return {str(k): run_config_to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, tuple):
        return [run_config_to_dict(v) for v in cfg]
    return cfg


# ------------------------------------------------------------------------------- the example


def example_config() -> str:
    """Every field with its default and its description, as a YAML file."""
    lines = ["# zerohsi-jax run config: every field, its default and what it means.",
             "# Paths are relative to this file. Numbers of the paper are the defaults."]

    def emit(obj, indent: int):
        pad = "  " * indent
        for f in dataclasses.fields(obj):
            help_text = f.metadata.get("help", "")
            if help_text is None:
                continue
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.append(f"{pad}{f.name}:")
                emit(value, indent + 1)
                continue
            if help_text:
                lines.append(f"{pad}# {help_text}")
            dumped = yaml.safe_dump({f.name: run_config_to_dict(value)}, default_flow_style=True, width=1000).strip()
            lines.append(pad + dumped[1:-1] if dumped.startswith("{") else pad + dumped)

    emit(RunConfig(), 0)
    return "\n".join(lines) + "\n"
