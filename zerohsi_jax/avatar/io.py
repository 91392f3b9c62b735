"""Avatar files: one `.npz`-format file that holds an `AnimatableAvatar` without Torch.

Layout: `__format__` and `__config__` (JSON: network sizes, map size, kinematic tree, colour
order), the networks' parameters under the official AvatarNet state-dict keys
(`color_net.style.1.weight`, ..., `viewdir_net.0.weight`), and the template's arrays under
`template.<field>`. `converters/avatar_to_eqx.py` writes it from an official checkpoint;
`save_avatar` writes it from any avatar (the built-in one included).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from ..errors import UserError
from ..files import atomic_write
from .layers import ViewDirNet
from .model import AnimatableAvatar, AvatarTemplate
from .statedict import check_state_dict, load_state_dict, to_state_dict
from .styleunet import DualStyleUNet, StyleUNetConfig

FORMAT = "zerohsi-avatar-v1"
NETS = ("position_net", "other_net", "color_net")

MISSING_AVATAR_HELP = (
    "An avatar file is made from a trained Animatable Gaussians avatar (lizhe00/AnimatableGaussians): "
    "its checkpoint (net.pt, holding 'avatar_net') and its template files "
    "(smpl_pos_map/cano_smpl_pos_map.exr, "
    "cano_smpl_nml_map.exr, init_pts_lbs.npy, and smpl_params.npz), converted with\n"
    "  python -m converters.avatar_to_eqx --checkpoint net.pt --template-dir DATA_DIR "
    "--smplx-model SMPLX_NEUTRAL.npz -o avatar.eqx\n"
    "or use the built-in avatar (zerohsi_jax.avatar.builtin_avatar) that needs no download."
)


class AvatarFileError(UserError, ValueError):
    pass


def avatar_config(avatar: AnimatableAvatar) -> dict:
    t = avatar.template
    return {
        "nets": {name: dataclasses.asdict(getattr(avatar, name).config) for name in NETS},
        "viewdir": None
        if avatar.viewdir_net is None
        else {
            "hidden": int(avatar.viewdir_net.weight0.shape[0]),
            "out": int(avatar.viewdir_net.weight2.shape[0]),
        },
        "color_order": avatar.color_order,
        "weight_viewdirs": avatar.weight_viewdirs,
        "map_size": t.map_size,
        "parents": list(t.parents),
    }


def avatar_state_keys(avatar: AnimatableAvatar) -> dict:
    """Official AvatarNet state-dict keys of the avatar's networks -> accessors."""
    keys = {}
    for name in NETS + (("viewdir_net",) if avatar.viewdir_net is not None else ()):
        net = getattr(avatar, name)
        keys.update(
            {f"{name}.{k}": (lambda a, n=name, f=f: f(getattr(a, n))) for k, f in net.state_keys().items()}
        )
    return keys


def network_state_dict(avatar: AnimatableAvatar) -> dict[str, np.ndarray]:
    """The avatar's networks as an official AvatarNet state dict (numpy float32)."""
    out = {}
    for name in NETS + (("viewdir_net",) if avatar.viewdir_net is not None else ()):
        out.update(to_state_dict(getattr(avatar, name), prefix=f"{name}."))
    return out


def avatar_skeleton(config: dict):
    """The networks (dict by name) and view-direction net (or None) of an avatar config, with
    `jax.ShapeDtypeStruct` leaves: the layout at no memory and no init cost."""

    def build():
        keys = jax.random.split(jax.random.key(0), 4)
        nets = {
            name: DualStyleUNet(StyleUNetConfig(**config["nets"][name]), key=keys[i])
            for i, name in enumerate(NETS)
        }
        view = config.get("viewdir")
        viewdir = None if view is None else ViewDirNet(view["out"], view["hidden"], key=keys[3])
        return nets, viewdir

    nets, viewdir = jax.eval_shape(build)
    return nets, viewdir


def build_avatar(
    config: dict, state: dict[str, np.ndarray], template: AvatarTemplate, *, strict: bool = True
):
    """An `AnimatableAvatar` from a config, an official-layout state dict and a template."""
    nets, viewdir = avatar_skeleton(config)
    loaded = {name: load_state_dict(nets[name], state, prefix=f"{name}.", strict=False) for name in NETS}
    if viewdir is not None:
        viewdir = load_state_dict(viewdir, state, prefix="viewdir_net.", strict=False)
    if strict:
        known = set()
        for name in NETS:
            known |= {f"{name}.{k}" for k in nets[name].state_keys()} | {
                f"{name}.{k}" for k in nets[name].constant_keys()
            }
        if viewdir is not None:
            known |= {f"viewdir_net.{k}" for k in viewdir.state_keys()}
        extra = sorted(k for k in state if k not in known)
        if extra:
            raise AvatarFileError(
                "unexpected keys in the avatar state dict: "
                + ", ".join(f"{k!r} {tuple(np.shape(state[k]))}" for k in extra[:20])
            )
    return AnimatableAvatar(
        position_net=loaded["position_net"],
        other_net=loaded["other_net"],
        color_net=loaded["color_net"],
        viewdir_net=viewdir,
        template=template,
        color_order=config.get("color_order", "rgb"),
        weight_viewdirs=float(config.get("weight_viewdirs", 1.0)),
    )


def check_network_state(config: dict, state: dict[str, np.ndarray]) -> None:
    """Raise naming every missing, mis-shaped or unexpected key of an AvatarNet state dict."""
    nets, viewdir = avatar_skeleton(config)
    errors = []
    for name in NETS:
        try:
            check_state_dict(nets[name], state, prefix=f"{name}.", strict=True)
        except ValueError as err:
            errors.append(str(err))
    if viewdir is not None:
        try:
            check_state_dict(viewdir, state, prefix="viewdir_net.", strict=True)
        except ValueError as err:
            errors.append(str(err))
    prefixes = tuple(f"{n}." for n in NETS + ("viewdir_net",))
    stray = sorted(k for k in state if not k.startswith(prefixes))
    if stray:
        errors.append(
            "unexpected keys: " + ", ".join(f"{k!r} {tuple(np.shape(state[k]))}" for k in stray[:20])
        )
    if errors:
        raise AvatarFileError("\n".join(errors))


def template_arrays(template: AvatarTemplate) -> dict[str, np.ndarray]:
    return {f"template.{name}": np.asarray(getattr(template, name)) for name in AvatarTemplate.ARRAY_FIELDS}


def template_from_arrays(arrays: dict[str, np.ndarray], config: dict) -> AvatarTemplate:
    missing = [n for n in AvatarTemplate.ARRAY_FIELDS if f"template.{n}" not in arrays]
    if missing:
        raise AvatarFileError(f"avatar file lacks template arrays: {', '.join(missing)}")
    values = {}
    for name in AvatarTemplate.ARRAY_FIELDS:
        a = np.asarray(arrays[f"template.{name}"])
        values[name] = jnp.asarray(
            a.astype(np.int32) if np.issubdtype(a.dtype, np.integer) else a.astype(np.float32)
        )
    return AvatarTemplate(
        **values, map_size=int(config["map_size"]), parents=tuple(int(p) for p in config["parents"])
    )


def write_avatar_file(
    path, config: dict, state: dict[str, np.ndarray], template: dict[str, np.ndarray]
) -> Path:
    payload = {"__format__": np.array(FORMAT), "__config__": np.array(json.dumps(config))}
    payload.update({k: np.asarray(v) for k, v in state.items()})
    payload.update(template)

    def write(tmp: str):
        # Through a file object so numpy does not append '.npz' to the chosen name.
        with open(tmp, "wb") as f:
            np.savez(f, **payload)

    return atomic_write(Path(path), write)


def save_avatar(avatar: AnimatableAvatar, path) -> Path:
    """Write `avatar` (networks in the official key layout + template) to one file."""
    return write_avatar_file(
        path, avatar_config(avatar), network_state_dict(avatar), template_arrays(avatar.template)
    )


def load_avatar(path) -> AnimatableAvatar:
    """Read an avatar file written by the converter or `save_avatar`. No Torch needed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"avatar file {path} does not exist. {MISSING_AVATAR_HELP}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same guidance
        raise AvatarFileError(f"{path} is not an avatar file ({err}). {MISSING_AVATAR_HELP}") from None
    if str(arrays.get("__format__", "")) != FORMAT:
        raise AvatarFileError(
            f"{path}: unknown format {str(arrays.get('__format__'))!r}, expected {FORMAT!r}"
        )
    config = json.loads(str(arrays.pop("__config__")))
    arrays.pop("__format__")
    template = template_from_arrays({k: v for k, v in arrays.items() if k.startswith("template.")}, config)
    state = {k: v for k, v in arrays.items() if not k.startswith("template.")}
    try:
        return build_avatar(config, state, template)
    except ValueError as err:
        raise AvatarFileError(f"{path}: {err}") from None
