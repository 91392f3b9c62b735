"""Convert official VPoser checkpoints (Torch) to the Equinox file `zerohsi_jax.body.VPoser.load` reads.

    python -m converters.vposer_to_eqx V02_05/ vposer_v02_05.eqx        # v2: newest snapshots/*.ckpt
    python -m converters.vposer_to_eqx V02_05_epoch=08_val_loss=0.03.ckpt vposer.eqx
    python -m converters.vposer_to_eqx vposer_v1_0/ vposer_v1.eqx       # v1: newest snapshots/*.pt

v2 checkpoints are PyTorch Lightning files: the weights are under 'state_dict' with the prefix
'vp_model.' (other prefixes, such as the trainer's body model, are ignored). v1 snapshots are plain
state dicts with 'bodyprior_*' keys. Torch is imported only here, never by zerohsi_jax.
"""

from __future__ import annotations

import argparse
import pickle
import sys
import types
from pathlib import Path

import numpy as np

V2_PREFIX = "vp_model."


def find_checkpoint(src) -> Path:
    """The checkpoint file itself, or the newest one in an experiment folder (or its snapshots/)."""
    src = Path(src)
    if src.is_file():
        return src
    if not src.is_dir():
        raise FileNotFoundError(f"VPoser checkpoint not found: {src}")
    for folder in (src / "snapshots", src):
        found = sorted(
            list(folder.glob("*.ckpt")) + list(folder.glob("*.pt")) + list(folder.glob("*.pth")),
            key=lambda p: p.stat().st_mtime,
        )
        if found:
            return found[-1]
    raise FileNotFoundError(f"no .ckpt/.pt checkpoint in {src} or {src / 'snapshots'}")


class _Stub:
    """Stands in for classes a checkpoint pickles but that are not installed (configs, loggers)."""

    def __init__(self, *args, **kwargs):
        self.args = args

    def __setstate__(self, state):
        self.state = state


class _LenientUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Stub,), {"__module__": "stub." + module})


_lenient_pickle = types.ModuleType("lenient_pickle")
_lenient_pickle.Unpickler = _LenientUnpickler
_lenient_pickle.load = pickle.load
_lenient_pickle.__name__ = "lenient_pickle"


def load_torch_file(path) -> dict:
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # Lightning checkpoints also pickle hyper-parameters (DotMap, omegaconf, ...): load them with
        # stand-ins for whatever is not installed. This runs the file's pickle: convert trusted files only.
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_lenient_pickle)


def extract_state_dict(obj) -> dict:
    """VPoser weights as numpy arrays with the official key names (prefixes removed)."""
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(state, dict):
        raise ValueError(f"expected a state dict or a checkpoint dict, got {type(obj).__name__}")
    keys = list(state)
    if any(k.startswith(V2_PREFIX) for k in keys):
        state = {k[len(V2_PREFIX) :]: v for k, v in state.items() if k.startswith(V2_PREFIX)}
    elif all(k.startswith("module.") for k in keys):
        state = {k[len("module.") :]: v for k, v in state.items()}
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        out[k] = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
    return out


def convert(src, dst, version: int | None = None) -> Path:
    from zerohsi_jax.body.vposer import VPoser

    ckpt = find_checkpoint(src)
    state = extract_state_dict(load_torch_file(ckpt))
    model = VPoser.from_state_dict(state, version=version)
    return model.save(dst, source=str(ckpt))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", help="a VPoser .ckpt/.pt file or its experiment folder")
    parser.add_argument("dst", help="output file (e.g. vposer_v02_05.eqx)")
    parser.add_argument("--version", type=int, choices=(1, 2), help="default: detected from the keys")
    args = parser.parse_args(argv)
    print(convert(args.src, args.dst, version=args.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
