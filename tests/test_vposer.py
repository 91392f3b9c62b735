"""VPoser v1/v2: equality with Torch references, converter -> file -> loader round trips, file errors."""

import sys
import types
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

# scipy is a test dependency (the dev extra): imported here, not skipped mid-test, so that a
# missing scipy cannot hide the encoder checks that follow the decoder's.
from scipy.spatial.transform import Rotation

from zerohsi_jax.body import VPoser, VPoserFileNotFoundError, random_vposer
from zerohsi_jax.body.vposer import random_state_dict
from zerohsi_jax.geometry import axis_angle_to_matrix

# ------------------------------------------------------------------------------------ Torch side


def _torch_state(numpy_state):
    """The numpy weights as a Torch state dict, with BatchNorm's step counters as real files have."""
    import torch

    state = {k: torch.from_numpy(np.asarray(v)) for k, v in numpy_state.items()}
    for key in list(state):
        if key.endswith("running_var"):
            state[key[: -len("running_var")] + "num_batches_tracked"] = torch.tensor(1000)
    return state


def _v2_reference():
    """V02_05's module structure (human_body_prior `models/vposer_model.py`), rebuilt from its layer
    list so that its state-dict keys are the real ones; eval mode."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class BatchFlatten(nn.Module):
        def forward(self, x):
            return x.view(x.shape[0], -1)

    class NormalDistDecoder(nn.Module):
        def __init__(self, n_in, latent):
            super().__init__()
            self.mu = nn.Linear(n_in, latent)
            self.logvar = nn.Linear(n_in, latent)

        def forward(self, x):
            return self.mu(x), F.softplus(self.logvar(x))

    class ContinuousRotation(nn.Module):
        def forward(self, x):
            pair = x.view(-1, 3, 2)
            b1 = F.normalize(pair[:, :, 0], dim=1)
            b2 = F.normalize(pair[:, :, 1] - torch.sum(b1 * pair[:, :, 1], dim=1, keepdim=True) * b1, dim=-1)
            return torch.stack([b1, b2, torch.cross(b1, b2, dim=1)], dim=-1)

    class Reference(nn.Module):
        def __init__(self, neurons=512, latent=32):
            super().__init__()
            self.encoder_net = nn.Sequential(
                BatchFlatten(),
                nn.BatchNorm1d(63),
                nn.Linear(63, neurons),
                nn.LeakyReLU(),
                nn.BatchNorm1d(neurons),
                nn.Dropout(0.1),
                nn.Linear(neurons, neurons),
                nn.Linear(neurons, neurons),
                NormalDistDecoder(neurons, latent),
            )
            self.decoder_net = nn.Sequential(
                nn.Linear(latent, neurons),
                nn.LeakyReLU(),
                nn.Dropout(0.1),
                nn.Linear(neurons, neurons),
                nn.LeakyReLU(),
                nn.Linear(neurons, 126),
                ContinuousRotation(),
            )

    return Reference()


def _v1_reference():
    """VPoser v1 from its layer definitions (human_body_prior 0.8.5.0 `train/vposer_smpl.py`)."""
    from torch import nn
    from torch.nn import functional as F

    class Reference(nn.Module):
        def __init__(self, neurons=512, latent=32):
            super().__init__()
            self.bodyprior_enc_bn1 = nn.BatchNorm1d(63)
            self.bodyprior_enc_fc1 = nn.Linear(63, neurons)
            self.bodyprior_enc_bn2 = nn.BatchNorm1d(neurons)
            self.bodyprior_enc_fc2 = nn.Linear(neurons, neurons)
            self.bodyprior_enc_mu = nn.Linear(neurons, latent)
            self.bodyprior_enc_logvar = nn.Linear(neurons, latent)
            self.bodyprior_dec_fc1 = nn.Linear(latent, neurons)
            self.bodyprior_dec_fc2 = nn.Linear(neurons, neurons)
            self.bodyprior_dec_out = nn.Linear(neurons, 126)

        def encode(self, x):
            x = F.leaky_relu(self.bodyprior_enc_fc1(self.bodyprior_enc_bn1(x)), 0.2)
            x = F.leaky_relu(self.bodyprior_enc_fc2(self.bodyprior_enc_bn2(x)), 0.2)
            return self.bodyprior_enc_mu(x), F.softplus(self.bodyprior_enc_logvar(x))

        def decode_matrot(self, z):
            x = F.leaky_relu(self.bodyprior_dec_fc2(F.leaky_relu(self.bodyprior_dec_fc1(z), 0.2)), 0.2)
            x = self.bodyprior_dec_out(x).view(-1, 3, 2)
            b1 = F.normalize(x[:, :, 0], dim=1)
            b2 = F.normalize(x[:, :, 1] - (b1 * x[:, :, 1]).sum(1, keepdim=True) * b1, dim=-1)
            return __import__("torch").stack([b1, b2, __import__("torch").cross(b1, b2, dim=1)], dim=-1)

    return Reference()


def _check_decode(ours: VPoser, reference_matrot, latent):
    """Our decode against reference rotation matrices (B*21, 3, 3) (float32 tolerance), and its
    axis-angle against an independent conversion of the reference (scipy)."""
    decoded = ours.decode(jnp.asarray(latent))
    batch = latent.shape[0]
    assert decoded.pose_body.shape == (batch, 21, 3) and decoded.pose_body_matrot.shape == (batch, 21, 3, 3)
    reference_matrot = reference_matrot.reshape(batch, 21, 3, 3)
    np.testing.assert_allclose(np.asarray(decoded.pose_body_matrot), reference_matrot, atol=1e-5)
    np.testing.assert_allclose(
        np.asarray(axis_angle_to_matrix(decoded.pose_body)), reference_matrot, atol=2e-5
    )
    rotvec = Rotation.from_matrix(reference_matrot.reshape(-1, 3, 3).astype(np.float64)).as_rotvec()
    rotvec = rotvec.reshape(batch, 21, 3)
    # At a half turn v and -v are the same rotation; compare vectors below it, matrices above.
    clear = np.linalg.norm(rotvec, axis=-1) < np.pi - 1e-2
    np.testing.assert_allclose(np.asarray(decoded.pose_body)[clear], rotvec[clear], atol=5e-5)


def _poses_and_latents(seed, batch=5):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(0, 0.4, (batch, 63)).astype(np.float32),
        rng.normal(0, 1, (batch, 32)).astype(np.float32),
    )


class _UninstalledConfig:
    """Stands for a hyper-parameter object whose package the converting machine does not have."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


@pytest.mark.torch
def test_v2_lightning_checkpoint_converts_and_decodes_like_the_reference(tmp_path, monkeypatch):
    import torch

    from converters import vposer_to_eqx

    weights = random_state_dict(seed=11, version=2)
    reference = _v2_reference()
    reference.load_state_dict(_torch_state(weights), strict=True)  # proves the key layout is V02_05's
    reference.eval()

    # A Lightning checkpoint as V02_05 ships it: prefixed weights next to the trainer's body model,
    # plus hyper-parameters pickled from a package that is not installed at conversion time.
    fake = types.ModuleType("vposer_training_config")
    _UninstalledConfig.__module__ = fake.__name__
    fake._UninstalledConfig = _UninstalledConfig
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    state = {f"vp_model.{k}": v for k, v in reference.state_dict().items()}
    state["bm_train.v_template"] = torch.zeros(10, 3)
    snapshots = tmp_path / "V02_05" / "snapshots"
    snapshots.mkdir(parents=True)
    ckpt = {
        "epoch": 8,
        "global_step": 1234,
        "pytorch-lightning_version": "1.2.0",
        "state_dict": state,
        "hyper_parameters": {"model_ps": _UninstalledConfig(latentD=32, num_neurons=512)},
    }
    torch.save(ckpt, snapshots / "V02_05_epoch=08_val_loss=0.03.ckpt")
    (tmp_path / "V02_05" / "V02_05.yaml").write_text("general: {}\n")
    monkeypatch.delitem(sys.modules, fake.__name__)

    out = tmp_path / "vposer_v02_05.eqx"
    assert vposer_to_eqx.main([str(tmp_path / "V02_05"), str(out)]) == 0
    ours = VPoser.load(out)
    assert ours.version == 2 and ours.latent_dim == 32 and ours.num_neurons == 512

    poses, latents = _poses_and_latents(0)
    with torch.no_grad():
        ref_matrot = reference.decoder_net(torch.from_numpy(latents)).numpy()
        ref_mu, ref_std = reference.encoder_net(torch.from_numpy(poses))
    _check_decode(ours, ref_matrot, latents)
    mu, std = ours.encode(jnp.asarray(poses))
    np.testing.assert_allclose(np.asarray(mu), ref_mu.numpy(), atol=2e-5)
    np.testing.assert_allclose(np.asarray(std), ref_std.numpy(), atol=2e-5)


@pytest.mark.torch
def test_v1_state_dict_converts_and_matches_its_layer_definitions(tmp_path):
    import torch

    from converters import vposer_to_eqx

    reference = _v1_reference()
    reference.load_state_dict(_torch_state(random_state_dict(seed=12, version=1)), strict=True)
    reference.eval()
    (tmp_path / "vposer_v1_0" / "snapshots").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "vposer_v1_0" / "snapshots" / "TR00_E096.pt")
    out = tmp_path / "vposer_v1.eqx"
    vposer_to_eqx.convert(tmp_path / "vposer_v1_0", out)
    ours = VPoser.load(out)
    assert ours.version == 1
    poses, latents = _poses_and_latents(1)
    with torch.no_grad():
        ref_matrot = reference.decode_matrot(torch.from_numpy(latents)).numpy()
        ref_mu, ref_std = reference.encode(torch.from_numpy(poses))
    _check_decode(ours, ref_matrot, latents)
    mu, std = ours.encode(poses)
    np.testing.assert_allclose(np.asarray(mu), ref_mu.numpy(), atol=2e-5)
    np.testing.assert_allclose(np.asarray(std), ref_std.numpy(), atol=2e-5)


@pytest.mark.torch
def test_v1_matches_human_body_prior():
    """Against the registry package itself (pip install --no-deps human-body-prior==0.8.5.0
    torchgeometry==0.1.2 configer==1.3.1)."""
    import torch

    vposer_smpl = pytest.importorskip(
        "human_body_prior.train.vposer_smpl", reason="human-body-prior not installed"
    )
    reference = vposer_smpl.VPoser(num_neurons=512, latentD=32, data_shape=[1, 21, 3], use_cont_repr=True)
    weights = random_state_dict(seed=13, version=1)
    reference.load_state_dict(_torch_state(weights), strict=True)
    reference.eval()
    ours = VPoser.from_state_dict(weights)
    poses, latents = _poses_and_latents(2)
    with torch.no_grad():
        ref_matrot = reference.decode(
            torch.from_numpy(latents), output_type="matrot"
        ).numpy()  # (B, 1, 21, 9)
        posterior = reference.encode(torch.from_numpy(poses))
    _check_decode(ours, ref_matrot.reshape(-1, 3, 3), latents)
    mu, std = ours.encode(poses)
    np.testing.assert_allclose(np.asarray(mu), posterior.mean.numpy(), atol=2e-5)
    np.testing.assert_allclose(np.asarray(std), posterior.scale.numpy(), atol=2e-5)


# ------------------------------------------------------------------------------------ JAX side


@pytest.fixture(scope="module")
def vposer():
    return random_vposer(jax.random.PRNGKey(0))


def test_decode_gives_rotations_and_consistent_axis_angles(vposer):
    latents = jax.random.normal(jax.random.PRNGKey(1), (4, 32))
    decoded = eqx.filter_jit(VPoser.decode)(vposer, latents)
    rot = np.asarray(decoded.pose_body_matrot, dtype=np.float64)
    np.testing.assert_allclose(
        rot @ np.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5
    )
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(axis_angle_to_matrix(decoded.pose_body)), rot, atol=1e-5)
    # Unbatched latents give unbatched poses; (B, 21, 3) poses encode like (B, 63).
    # Eager against jitted: other programs, so float32 round-off (through the matrix-to-axis-angle
    # conversion, up to 2e-6 at LLVM's optimisation level 0), far below any batching mix-up.
    single = vposer.decode(latents[0])
    np.testing.assert_allclose(np.asarray(single.pose_body), np.asarray(decoded.pose_body[0]), atol=1e-5)
    poses = decoded.pose_body
    mu_a, std_a = vposer.encode(poses)
    mu_b, _ = vposer.encode(poses.reshape(4, 63))
    np.testing.assert_allclose(np.asarray(mu_a), np.asarray(mu_b), atol=1e-6)
    assert np.all(np.asarray(std_a) > 0)


def test_decode_is_differentiable_and_vmappable(vposer):
    latents = jax.random.normal(jax.random.PRNGKey(2), (3, 32))

    def loss(z):
        return jnp.sum(vposer.decode(z).pose_body ** 2)

    grad = jax.jit(jax.grad(loss))(latents)
    assert np.all(np.isfinite(np.asarray(grad))) and np.abs(np.asarray(grad)).max() > 0
    mapped = jax.vmap(lambda z: vposer.decode(z).pose_body)(latents)
    np.testing.assert_allclose(np.asarray(mapped), np.asarray(vposer.decode(latents).pose_body), atol=1e-6)


def test_file_round_trip_without_torch(vposer, tmp_path):
    path = vposer.save(tmp_path / "vposer.eqx", source="random")
    loaded = VPoser.load(path)
    for a, b in zip(jax.tree_util.tree_leaves(vposer), jax.tree_util.tree_leaves(loaded), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    v1 = random_vposer(3, version=1)
    assert VPoser.load(v1.save(tmp_path / "v1.eqx")).version == 1
    assert loaded.enc_fc3 is not None and v1.enc_fc3 is None


def test_missing_or_wrong_vposer_files_explain_what_to_do(tmp_path):
    with pytest.raises(VPoserFileNotFoundError) as err:
        VPoser.load(tmp_path / "vposer_v02_05.eqx")
    message = str(err.value)
    for needle in ("V02_05", "https://smpl-x.is.tue.mpg.de", "python -m converters.vposer_to_eqx"):
        assert needle in message
    ckpt = tmp_path / "V02_05_epoch=08_val_loss=0.03.ckpt"
    ckpt.write_bytes(b"not really")
    with pytest.raises(ValueError, match="convert it first"):
        VPoser.load(ckpt)
    junk = tmp_path / "junk.eqx"
    junk.write_bytes(b"\x00\x01binary")
    with pytest.raises(ValueError, match="not a zerohsi_jax VPoser file"):
        VPoser.load(junk)


def test_state_dict_errors_name_the_key():
    weights = random_state_dict(seed=0, version=2)
    del weights["decoder_net.3.weight"]
    with pytest.raises(KeyError, match="decoder_net.3.weight"):
        VPoser.from_state_dict(weights)
    with pytest.raises(ValueError, match="not a VPoser state dict"):
        VPoser.from_state_dict({"foo.weight": np.zeros(3)})


# ------------------------------------------------------------------------ the demo's pose prior


@pytest.fixture(scope="module")
def synthetic_body():
    from zerohsi_jax.body import SMPLX
    from zerohsi_jax.synthetic import synthetic_smplx_path

    return SMPLX.load(synthetic_smplx_path(), num_betas=10, use_pca=False, flat_hand_mean=True)


def test_pose_prior_cache_is_keyed_by_what_produced_it(synthetic_body, tmp_path, monkeypatch):
    """A cached prior is read back only for the same body, seed, motion count and producing code;
    an edit to any producing file (the VPoser module's included) trains a new one."""
    import shutil

    from zerohsi_jax.synthetic import pose_prior

    built = []

    def build(body, seed, num_motions, **training):  # stands for the 15 s of training
        built.append((seed, num_motions))
        return random_vposer(seed)

    monkeypatch.setattr(pose_prior, "_build", build)
    first = pose_prior.synthetic_pose_prior(synthetic_body, cache_dir=tmp_path, num_motions=8)
    again = pose_prior.synthetic_pose_prior(synthetic_body, cache_dir=tmp_path, num_motions=8)
    assert built == [(0, 8)]  # the second request was read from the cache
    for a, b in zip(jax.tree_util.tree_leaves(first), jax.tree_util.tree_leaves(again), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    key = pose_prior._fingerprint(synthetic_body, 0, 8)
    keys = {key}

    def assert_new(what, new_key):
        assert new_key not in keys, f"{what} left the cache key unchanged"
        keys.add(new_key)

    assert_new("the seed", pose_prior._fingerprint(synthetic_body, 1, 8))
    assert_new("the number of motions", pose_prior._fingerprint(synthetic_body, 0, 9))
    moved = eqx.tree_at(lambda b: b.v_template, synthetic_body, synthetic_body.v_template + 0.01)
    assert_new("another body", pose_prior._fingerprint(moved, 0, 8))
    # Each producing file, edited in a copy of the package.
    package = tmp_path / "package"
    for name in pose_prior.PRODUCERS:
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pose_prior._PACKAGE / name, package / name)
    monkeypatch.setattr(pose_prior, "_PACKAGE", package)
    assert pose_prior._fingerprint(synthetic_body, 0, 8) == key  # the copy is the same code
    assert "body/vposer.py" in pose_prior.PRODUCERS  # the architecture and file format
    for name in pose_prior.PRODUCERS:
        with open(package / name, "a") as f:
            f.write("\n# edited\n")
        assert_new(f"an edit of {name}", pose_prior._fingerprint(synthetic_body, 0, 8))


def test_pose_prior_producers_are_the_code_that_runs(synthetic_body):
    """Every function of the package that runs while a prior is built lives in a file of
    `PRODUCERS` (a small build: 2 motions, 2 training steps). JAX's caches are cleared first so
    that jitted functions are traced, i.e. run in Python, again."""
    from zerohsi_jax.synthetic import pose_prior

    package = pose_prior._PACKAGE
    ran = set()

    def importing(frame):
        while frame is not None:
            if frame.f_code.co_filename.startswith("<frozen importlib"):
                return True
            frame = frame.f_back
        return False

    def record(frame, event, arg):
        if event == "call":
            path = Path(frame.f_code.co_filename)
            # Code that runs because a module is imported (class bodies, module constants) is
            # not what produced the prior.
            if path.is_relative_to(package) and not importing(frame):
                ran.add(path.relative_to(package).as_posix())

    jax.clear_caches()
    sys.setprofile(record)
    try:
        model = pose_prior._build(synthetic_body, 0, 2, steps=2, batch_size=8)
    finally:
        sys.setprofile(None)
    assert isinstance(model, VPoser)
    assert {"synthetic/motion.py", "body/vposer_training.py", "body/vposer.py"} <= ran  # the profile saw the build
    assert ran <= set(pose_prior.PRODUCERS), f"not in the cache key: {sorted(ran - set(pose_prior.PRODUCERS))}"
