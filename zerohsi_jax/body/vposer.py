"""VPoser (v1 and v2 / V02_05) in Equinox: the variational body-pose prior of the refinement stage.

Both versions map the 21 SMPL-X body joints (63 axis-angle values) to a 32-D latent and back; the
decoder emits a continuous 6D rotation per joint, turned into a rotation matrix by Gram-Schmidt and
then into axis-angle. Evaluation-mode semantics throughout: BatchNorm uses its running statistics
and dropout is off.

    v1 (human_body_prior 0.8.5.0, `train/vposer_smpl.py`):
        encode: bn1 -> fc1 -> leaky(0.2) -> bn2 -> [dropout] -> fc2 -> leaky(0.2) -> (mu, logvar heads)
        decode: fc1 -> leaky(0.2) -> [dropout] -> fc2 -> leaky(0.2) -> out(126) -> 6D
    v2 (V02_05, `models/vposer_model.py`):
        encode: bn1 -> fc1 -> leaky(0.01) -> bn2 -> [dropout] -> fc2 -> fc3 -> (mu, logvar heads)
        decode: fc1 -> leaky(0.01) -> [dropout] -> fc2 -> leaky(0.01) -> out(126) -> 6D
The "logvar" head is used through softplus as the standard deviation (as both originals do).

Weights come from the official Torch checkpoints through `converters/vposer_to_eqx.py`, which
writes the file `VPoser.load` reads (a JSON header line, then Equinox-serialised leaves).
"""

from __future__ import annotations

import json
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from ..errors import UserError
from ..geometry import matrix_to_axis_angle, rot6d_to_matrix

NUM_BODY_JOINTS = 21
FILE_FORMAT = "zerohsi_jax.vposer"
FILE_FORMAT_VERSION = 1
BATCHNORM_EPS = 1e-5  # torch.nn.BatchNorm1d's default
LEAKY_SLOPE = {1: 0.2, 2: 0.01}  # v1 calls F.leaky_relu(slope=.2); v2 uses nn.LeakyReLU()'s default

VPOSER_DOWNLOAD_HELP = (
    "Download VPoser v2.0 (V02_05) from https://smpl-x.is.tue.mpg.de (Downloads, after registering), "
    "unpack it, then convert it once with `python -m converters.vposer_to_eqx path/to/V02_05 "
    "vposer_v02_05.eqx` (needs torch) and point the config at the .eqx file. "
    "`zerohsi_jax.body.random_vposer(key)` gives random weights for tests and the demo."
)


class VPoserFileNotFoundError(UserError, FileNotFoundError):
    """The configured VPoser file does not exist."""


class Linear(eqx.Module):
    """y = x @ weight.T + bias, with torch's (out, in) weight layout."""

    weight: Float[Array, "out in"]
    bias: Float[Array, " out"]

    def __call__(self, x: Float[Array, "... in"]) -> Float[Array, "... out"]:
        return x @ self.weight.T + self.bias


class BatchNorm(eqx.Module):
    """BatchNorm1d in evaluation mode (running statistics)."""

    weight: Float[Array, " n"]
    bias: Float[Array, " n"]
    running_mean: Float[Array, " n"]
    running_var: Float[Array, " n"]

    def __call__(self, x: Float[Array, "... n"]) -> Float[Array, "... n"]:
        return (x - self.running_mean) * jax.lax.rsqrt(
            self.running_var + BATCHNORM_EPS
        ) * self.weight + self.bias


class VPoserDecoded(eqx.Module):
    pose_body: Float[Array, "*batch 21 3"]  # axis-angle per body joint
    pose_body_matrot: Float[Array, "*batch 21 3 3"]


class VPoser(eqx.Module):
    enc_bn1: BatchNorm
    enc_fc1: Linear
    enc_bn2: BatchNorm
    enc_fc2: Linear
    enc_fc3: Linear | None  # v2 only: a second 512->512 layer right after fc2
    enc_mu: Linear
    enc_logvar: Linear
    dec_fc1: Linear
    dec_fc2: Linear
    dec_out: Linear
    version: int = eqx.field(static=True)

    @property
    def latent_dim(self) -> int:
        return self.enc_mu.weight.shape[0]

    @property
    def num_neurons(self) -> int:
        return self.enc_fc1.weight.shape[0]

    def encode(self, pose_body: Float[Array, "*batch 63"] | Float[Array, "*batch 21 3"]):
        """(mu, std) of the posterior over the latent, each (*batch, latent_dim)."""
        return _encode_jit(self, jnp.asarray(pose_body))

    def decode(self, latent: Float[Array, "*batch latent"]) -> VPoserDecoded:
        """Body pose (axis-angle and rotation matrices) of latent codes."""
        return _decode_jit(self, jnp.asarray(latent))

    def _encode(self, pose_body):
        if pose_body.shape[-2:] == (NUM_BODY_JOINTS, 3):
            pose_body = pose_body.reshape(*pose_body.shape[:-2], 3 * NUM_BODY_JOINTS)
        slope = LEAKY_SLOPE[self.version]
        x = self.enc_bn1(pose_body)
        x = jax.nn.leaky_relu(self.enc_fc1(x), slope)
        x = self.enc_bn2(x)
        if self.version == 1:
            x = jax.nn.leaky_relu(self.enc_fc2(x), slope)
        else:
            x = self.enc_fc3(self.enc_fc2(x))
        return self.enc_mu(x), jax.nn.softplus(self.enc_logvar(x))

    def _decode(self, latent):
        slope = LEAKY_SLOPE[self.version]
        x = jax.nn.leaky_relu(self.dec_fc1(latent), slope)
        x = jax.nn.leaky_relu(self.dec_fc2(x), slope)
        x = self.dec_out(x)
        matrot = rot6d_to_matrix(x.reshape(*x.shape[:-1], NUM_BODY_JOINTS, 6))
        return VPoserDecoded(pose_body=matrix_to_axis_angle(matrot), pose_body_matrot=matrot)

    def __call__(self, pose_body):
        """Encode to the posterior mean and decode it (the deterministic reconstruction)."""
        mu, _ = self.encode(pose_body)
        return self.decode(mu)

    # ------------------------------------------------------------------------------ construction

    @classmethod
    def from_state_dict(cls, state: dict, version: int | None = None, dtype=jnp.float32) -> VPoser:
        """Build from a Torch state dict given as numpy arrays (v1 keys `bodyprior_*`, v2 keys
        `encoder_net.*` / `decoder_net.*`, the `vp_model.` prefix already stripped)."""
        state = {k: np.asarray(v) for k, v in state.items()}
        if version is None:
            version = detect_version(state)
        names = _V1_KEYS if version == 1 else _V2_KEYS

        def take(key, shape=None):
            if key not in state:
                raise KeyError(
                    f"VPoser v{version} state dict is missing '{key}' (has e.g. {sorted(state)[:4]})"
                )
            value = state[key]
            if shape is not None and value.shape != shape:
                raise ValueError(f"VPoser v{version} key '{key}' has shape {value.shape}, expected {shape}")
            return jnp.asarray(value, dtype=dtype)

        def linear(prefix):
            return Linear(weight=take(prefix + ".weight"), bias=take(prefix + ".bias"))

        def batchnorm(prefix):
            return BatchNorm(
                *(take(f"{prefix}.{k}") for k in ("weight", "bias", "running_mean", "running_var"))
            )

        model = cls(
            enc_bn1=batchnorm(names["enc_bn1"]),
            enc_fc1=linear(names["enc_fc1"]),
            enc_bn2=batchnorm(names["enc_bn2"]),
            enc_fc2=linear(names["enc_fc2"]),
            enc_fc3=linear(names["enc_fc3"]) if version == 2 else None,
            enc_mu=linear(names["enc_mu"]),
            enc_logvar=linear(names["enc_logvar"]),
            dec_fc1=linear(names["dec_fc1"]),
            dec_fc2=linear(names["dec_fc2"]),
            dec_out=linear(names["dec_out"]),
            version=version,
        )
        _check_sizes(model)
        return model

    # ------------------------------------------------------------------------------ file format

    def save(self, path, source: str = "") -> Path:
        """Write the Equinox file `VPoser.load` reads."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "format": FILE_FORMAT,
            "format_version": FILE_FORMAT_VERSION,
            "version": self.version,
            "latent_dim": self.latent_dim,
            "num_neurons": self.num_neurons,
            "num_joints": NUM_BODY_JOINTS,
            "dtype": str(self.enc_fc1.weight.dtype),
            "source": source,
        }
        with open(path, "wb") as f:
            f.write(json.dumps(header).encode() + b"\n")
            eqx.tree_serialise_leaves(f, self)
        return path

    @classmethod
    def load(cls, path) -> VPoser:
        """Load a file written by `save` / the converter (no Torch needed)."""
        path = Path(path).expanduser()
        if not path.exists():
            raise VPoserFileNotFoundError(f"VPoser file not found: {path}. {VPOSER_DOWNLOAD_HELP}")
        if path.is_dir() or path.suffix in (".ckpt", ".pt", ".pth"):
            raise ValueError(
                f"{path} is a Torch checkpoint; convert it first: `python -m converters.vposer_to_eqx {path} "
                "vposer.eqx`, then load the .eqx file"
            )
        with open(path, "rb") as f:
            line = f.readline()
            try:
                header = json.loads(line)
            except ValueError as err:
                raise ValueError(f"{path} is not a zerohsi_jax VPoser file (no JSON header)") from err
            if header.get("format") != FILE_FORMAT:
                raise ValueError(
                    f"{path}: unexpected format {header.get('format')!r}, expected {FILE_FORMAT!r}"
                )
            if header.get("format_version", 0) > FILE_FORMAT_VERSION:
                raise ValueError(
                    f"{path}: written by a newer zerohsi_jax (format {header['format_version']})"
                )
            skeleton = _skeleton(
                header["version"],
                header["num_neurons"],
                header["latent_dim"],
                jnp.dtype(header.get("dtype", "float32")),
            )
            return eqx.tree_deserialise_leaves(f, skeleton)


# Compiled per batch shape with the weights as arguments; inlined when called inside a caller's jit.
_encode_jit = eqx.filter_jit(VPoser._encode)
_decode_jit = eqx.filter_jit(VPoser._decode)

_V1_KEYS = {
    "enc_bn1": "bodyprior_enc_bn1",
    "enc_fc1": "bodyprior_enc_fc1",
    "enc_bn2": "bodyprior_enc_bn2",
    "enc_fc2": "bodyprior_enc_fc2",
    "enc_mu": "bodyprior_enc_mu",
    "enc_logvar": "bodyprior_enc_logvar",
    "dec_fc1": "bodyprior_dec_fc1",
    "dec_fc2": "bodyprior_dec_fc2",
    "dec_out": "bodyprior_dec_out",
}
# Indices inside V02_05's nn.Sequential: encoder_net = [BatchFlatten, BN, Linear, LeakyReLU, BN,
# Dropout, Linear, Linear, NormalDistDecoder(mu, logvar)], decoder_net = [Linear, LeakyReLU, Dropout,
# Linear, LeakyReLU, Linear, ContinousRotReprDecoder].
_V2_KEYS = {
    "enc_bn1": "encoder_net.1",
    "enc_fc1": "encoder_net.2",
    "enc_bn2": "encoder_net.4",
    "enc_fc2": "encoder_net.6",
    "enc_fc3": "encoder_net.7",
    "enc_mu": "encoder_net.8.mu",
    "enc_logvar": "encoder_net.8.logvar",
    "dec_fc1": "decoder_net.0",
    "dec_fc2": "decoder_net.3",
    "dec_out": "decoder_net.5",
}


def detect_version(state: dict) -> int:
    if "bodyprior_enc_fc1.weight" in state:
        return 1
    if "encoder_net.2.weight" in state:
        return 2
    raise ValueError(
        "not a VPoser state dict: expected v1 keys 'bodyprior_enc_*' or v2 keys 'encoder_net.*' "
        f"(got e.g. {sorted(state)[:5]})"
    )


def _check_sizes(model: VPoser):
    n_in = model.enc_fc1.weight.shape[1]
    n_out = model.dec_out.weight.shape[0]
    if n_in != 3 * NUM_BODY_JOINTS or n_out != 6 * NUM_BODY_JOINTS:
        raise ValueError(f"VPoser must map 63 inputs to 126 outputs (21 joints); got {n_in} and {n_out}")


def _skeleton(version: int, num_neurons: int, latent_dim: int, dtype=jnp.float32) -> VPoser:
    """A VPoser of the right structure filled with zeros (the template for deserialisation)."""
    shapes = _layer_shapes(version, num_neurons, latent_dim)
    state = {k: np.zeros(s, dtype=np.float32) for k, s in shapes.items()}
    return VPoser.from_state_dict(state, version=version, dtype=dtype)


def _layer_shapes(version: int, num_neurons: int, latent_dim: int) -> dict:
    names = _V1_KEYS if version == 1 else _V2_KEYS
    n_in, n_out = 3 * NUM_BODY_JOINTS, 6 * NUM_BODY_JOINTS
    linear_io = {
        "enc_fc1": (n_in, num_neurons),
        "enc_fc2": (num_neurons, num_neurons),
        "enc_fc3": (num_neurons, num_neurons),
        "enc_mu": (num_neurons, latent_dim),
        "enc_logvar": (num_neurons, latent_dim),
        "dec_fc1": (latent_dim, num_neurons),
        "dec_fc2": (num_neurons, num_neurons),
        "dec_out": (num_neurons, n_out),
    }
    shapes = {}
    for ours, theirs in names.items():
        if ours in ("enc_bn1", "enc_bn2"):
            size = n_in if ours == "enc_bn1" else num_neurons
            for k in ("weight", "bias", "running_mean", "running_var"):
                shapes[f"{theirs}.{k}"] = (size,)
        else:
            fan_in, fan_out = linear_io[ours]
            shapes[f"{theirs}.weight"] = (fan_out, fan_in)
            shapes[f"{theirs}.bias"] = (fan_out,)
    return shapes


def random_state_dict(seed: int = 0, version: int = 2, num_neurons: int = 512, latent_dim: int = 32) -> dict:
    """Random weights in the official key layout (numpy), initialised like torch's Linear
    (uniform +-1/sqrt(fan_in)) with non-trivial BatchNorm statistics so every term is exercised."""
    rng = np.random.default_rng(seed)
    state = {}
    for key, shape in _layer_shapes(version, num_neurons, latent_dim).items():
        if key.endswith("running_var"):
            state[key] = rng.uniform(0.5, 2.0, shape)
        elif key.endswith("running_mean"):
            state[key] = rng.normal(0.0, 0.2, shape)
        elif len(shape) == 1 and ("bn" in key or key.startswith(("encoder_net.1.", "encoder_net.4."))):
            state[key] = rng.normal(1.0 if key.endswith("weight") else 0.0, 0.1, shape)
        else:
            fan_in = shape[1] if len(shape) == 2 else _fan_in_of_bias(key, version, num_neurons, latent_dim)
            bound = 1.0 / np.sqrt(fan_in)
            state[key] = rng.uniform(-bound, bound, shape)
    return {k: v.astype(np.float32) for k, v in state.items()}


def _fan_in_of_bias(key, version, num_neurons, latent_dim):
    weight_key = key[: -len("bias")] + "weight"
    return _layer_shapes(version, num_neurons, latent_dim)[weight_key][1]


def random_vposer(
    key: PRNGKeyArray | int = 0, version: int = 2, num_neurons: int = 512, latent_dim: int = 32
) -> VPoser:
    """A VPoser with random weights (the real ones cannot be downloaded here), for tests and the demo."""
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1)) if not isinstance(key, int) else key
    return VPoser.from_state_dict(random_state_dict(seed, version, num_neurons, latent_dim), version=version)
