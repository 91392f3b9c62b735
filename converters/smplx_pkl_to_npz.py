"""Convert official SMPL-X `.pkl` model files to the `.npz` layout `zerohsi_jax.body.SMPLX` loads.

The official pickles hold chumpy arrays (and a scipy-sparse J_regressor). chumpy does not import on
Python 3.11, so this module unpickles with stand-in classes instead: a chumpy `Ch` pickles as its
instance dictionary, whose 'x' entry is the plain numpy array; a scipy sparse matrix pickles as its
dictionary of (data, indices, indptr, shape), which we densify with numpy. Neither chumpy, scipy nor
torch is needed.

    python -m converters.smplx_pkl_to_npz SMPLX_NEUTRAL.pkl [SMPLX_NEUTRAL.npz]
    python -m converters.smplx_pkl_to_npz models/smplx/          # every SMPLX_*.pkl in the folder
"""

from __future__ import annotations

import argparse
import pickle
import sys
from pathlib import Path

import numpy as np


class ChumpyStandIn:
    """Takes the place of any chumpy class while unpickling; keeps the pickled instance dictionary."""

    chumpy_class = "chumpy"

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"state": state}

    def to_array(self, key: str) -> np.ndarray:
        if "x" in self.state:
            value = self.state["x"]
            return value.to_array(key) if isinstance(value, ChumpyStandIn) else np.asarray(value)
        raise ValueError(
            f"key '{key}' is a chumpy expression ({self.chumpy_class}) rather than a plain chumpy array; "
            "re-export the model with chumpy installed (e.g. on Python 3.8) or use the official .npz"
        )


class SparseStandIn:
    """Takes the place of a scipy.sparse matrix class; densifies CSC/CSR/COO from the pickled state."""

    sparse_class = "scipy.sparse"

    def __init__(self, *args, **kwargs):
        self.state = {}

    def __setstate__(self, state):
        self.state = state

    def to_array(self, key: str) -> np.ndarray:
        s = self.state
        shape = tuple(s.get("_shape") or s.get("shape"))
        fmt = self.sparse_class.lower()
        dense = np.zeros(shape, dtype=np.asarray(s["data"]).dtype if "data" in s else np.float64)
        if "csc" in fmt or "csr" in fmt:
            data, indices, indptr = np.asarray(s["data"]), np.asarray(s["indices"]), np.asarray(s["indptr"])
            lengths = np.diff(indptr)
            outer = np.repeat(np.arange(len(lengths)), lengths)
            if "csc" in fmt:
                np.add.at(dense, (indices, outer), data)
            else:
                np.add.at(dense, (outer, indices), data)
        elif "coo" in fmt:
            rows = np.asarray(s.get("row", s.get("coords", [None, None])[0]))
            cols = np.asarray(s.get("col", s.get("coords", [None, None])[1]))
            np.add.at(dense, (rows, cols), np.asarray(s["data"]))
        else:
            raise ValueError(f"key '{key}': unsupported sparse format {self.sparse_class}")
        return dense


class ChumpyFreeUnpickler(pickle.Unpickler):
    """Unpickler that never imports chumpy or scipy: their classes become stand-ins."""

    def find_class(self, module, name):
        if module.split(".")[0] == "chumpy":
            return type(name, (ChumpyStandIn,), {"chumpy_class": f"{module}.{name}"})
        if module.startswith("scipy.sparse"):
            return type(name, (SparseStandIn,), {"sparse_class": f"{module}.{name}"})
        return super().find_class(module, name)


def load_smplx_pkl(path) -> dict:
    """The entries of an SMPL-X pickle as plain numpy arrays (non-array entries are dropped)."""
    with open(path, "rb") as f:
        raw = ChumpyFreeUnpickler(f, encoding="latin1").load()
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a pickled dict of model arrays, got {type(raw).__name__}")
    arrays = {}
    for key, value in raw.items():
        if isinstance(value, ChumpyStandIn | SparseStandIn):
            arrays[key] = value.to_array(key)
        elif isinstance(value, np.ndarray) and value.dtype != object:
            arrays[key] = value
        elif isinstance(value, str | bytes):
            arrays[key] = np.array(value if isinstance(value, str) else value.decode("latin1"))
        # dicts such as joint2num / part2num are metadata the forward pass does not use.
    return arrays


def convert(src, dst=None, validate: bool = True) -> Path:
    """Convert one `.pkl` to `.npz` (next to it unless `dst` is given); returns the output path."""
    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_suffix(".npz")
    arrays = load_smplx_pkl(src)
    # Match the official npz dtypes: integer topology, float geometry.
    for key in ("f", "kintree_table", "lmk_faces_idx", "dynamic_lmk_faces_idx"):
        if key in arrays:
            arrays[key] = arrays[key].astype(np.int64)
    if validate:
        from zerohsi_jax.body.smplx_model import SMPLX

        SMPLX.from_arrays(arrays, source=str(src))  # raises a ModelFileError naming any bad key
    dst.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dst, **arrays)
    return dst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", help="an SMPL-X .pkl file, or a folder of SMPLX_*.pkl files")
    parser.add_argument("dst", nargs="?", help="output .npz (default: next to the input)")
    parser.add_argument("--no-validate", action="store_true", help="skip the check with zerohsi_jax's loader")
    args = parser.parse_args(argv)
    src = Path(args.src)
    if src.is_dir():
        sources = sorted(src.glob("SMPLX_*.pkl"))
        if not sources:
            print(f"no SMPLX_*.pkl files in {src}", file=sys.stderr)
            return 1
        for pkl in sources:
            out = Path(args.dst) / (pkl.stem + ".npz") if args.dst else None
            print(convert(pkl, out, validate=not args.no_validate))
    else:
        print(convert(src, args.dst, validate=not args.no_validate))
    return 0


if __name__ == "__main__":
    sys.exit(main())
