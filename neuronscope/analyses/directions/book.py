"""Named directions in a layer's space, as units: ``layer:nmf3``, ``layer:sae17``, ``layer:dir-1a2b3c4d``.

"A layer is a space, not only a basis" (Olah et al. 2017; Szegedy et al. 2013 found random
directions as interpretable as single neurons). A :class:`DirectionSet` holds some directions of
one layer and how each one scores an activation vector, so every analysis that ranks, draws or
attributes units can do the same for directions:

- ``read`` (K, C): the unit vector each direction *reads* (what feature visualization pushes the
  activation along: the factor, the component, the user's vector, the dictionary's encoder row);
- ``write`` (K, C) and ``offset`` (C,): activations are rebuilt as ``offset + sum_i code_i write_i``
  (the factor or component with its code, the dictionary's decoder column in the layer's units),
  which is what the class links multiply with the logit gradient;
- ``codes(rows)`` (R, C) -> (R, K): each direction's score at one position: NMF coefficients
  (non-negative least squares with the factors fixed), PCA projections of the centred activations,
  the dictionary's TopK feature activations, or plain dot products with the unit vector.

A user's vector gets the name ``dir-`` + the first 8 hex digits of the SHA-256 of its float32
bytes, so the same vector always has the same address.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ...errors import NeuronscopeError, OptionError
from .rows import from_rows, to_rows

KINDS = ("nmf", "pca", "sae", "dir", "random")
TITLES = {"nmf": "NMF factors", "pca": "principal components", "sae": "dictionary features",
          "dir": "directions", "random": "random directions", "neuron": "neurons"}


def direction_id(vector) -> str:
    """``dir-`` + the first 8 hex digits of the SHA-256 of the vector's float32 bytes."""
    v = np.ascontiguousarray(np.asarray(vector, dtype=np.float32).reshape(-1))
    return "dir-" + hashlib.sha256(v.tobytes()).hexdigest()[:8]


@dataclass
class DirectionSet:
    """``K`` directions of one layer's C-dimensional activation space, and how they score it."""

    layer: str
    kind: str  # one of KINDS
    names: list[str]  # "nmf0", "sae17", "dir-1a2b3c4d", "rand3"
    read: np.ndarray  # (K, C) unit rows
    write: np.ndarray  # (K, C)
    offset: np.ndarray  # (C,)
    params: dict = field(default_factory=dict)  # what codes() needs beyond read/write (bias, k, mean...)
    _codes: Callable | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise OptionError(f"kind must be one of {', '.join(KINDS)}; got {self.kind!r}.")
        self.read = np.asarray(self.read, dtype=np.float32)
        self.write = np.asarray(self.write, dtype=np.float32)
        self.offset = np.asarray(self.offset, dtype=np.float32)
        if self.read.shape != self.write.shape or self.read.shape[0] != len(self.names):
            raise OptionError("read, write and names must describe the same directions.")

    # ------------------------------------------------------------------ what it is
    @property
    def k(self) -> int:
        return len(self.names)

    @property
    def channels(self) -> int:
        return int(self.read.shape[1])

    @property
    def title(self) -> str:
        return TITLES[self.kind]

    def addresses(self) -> list[str]:
        return [f"{self.layer}:{n}" for n in self.names]

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise NeuronscopeError(f"{self.layer} has no direction {name!r}: {self.describe_names()}.") from None

    def describe_names(self) -> str:
        if self.kind in ("dir",) or self.k <= 3:
            return ", ".join(self.names)
        prefix = self.names[0].rstrip("0123456789")
        return f"{prefix}0..{prefix}{self.k - 1}"

    # ------------------------------------------------------------------ scoring
    def codes(self, rows: torch.Tensor) -> torch.Tensor:
        """(R, C) activation rows -> (R, K) scores, float32."""
        rows = torch.as_tensor(rows).float()
        if rows.ndim != 2 or rows.shape[1] != self.channels:
            raise OptionError(f"{self.layer}'s directions need rows of {self.channels} numbers; got {tuple(rows.shape)}.")
        if self._codes is not None:
            return self._codes(rows).float()
        if self.kind == "pca":
            return (rows - torch.from_numpy(self.offset)) @ torch.from_numpy(self.read).T
        return rows @ torch.from_numpy(self.read).T

    def scores(self, acts: torch.Tensor) -> torch.Tensor:
        """(N, C, *S) -> (N, K, *S); (N, C) -> (N, K)."""
        acts = torch.as_tensor(acts)
        return from_rows(self.codes(to_rows(acts.detach().float().cpu())), acts.shape)

    def reconstruct(self, acts: torch.Tensor) -> torch.Tensor:
        """The activations rebuilt from these directions alone (same shape as ``acts``)."""
        acts = torch.as_tensor(acts)
        rows = self.codes(to_rows(acts.detach().float().cpu())) @ torch.from_numpy(self.write) + torch.from_numpy(self.offset)
        return from_rows(rows, (acts.shape[0], self.channels, *acts.shape[2:])).to(acts.dtype).to(acts.device)

    def vectors(self) -> dict[str, np.ndarray]:
        """name -> read vector (what ``visualize(..., directions=)`` takes)."""
        return {n: self.read[i] for i, n in enumerate(self.names)}

    # ------------------------------------------------------------------ store
    def table(self) -> dict[str, list]:
        """One row per direction, enough to rebuild the set (see :func:`from_table`)."""
        rows: dict[str, list] = {k: [] for k in ("address", "layer", "kind", "name", "read", "write", "encoder",
                                                  "bias")}
        enc, bias = self.params.get("encoder"), self.params.get("b_enc")
        for i, n in enumerate(self.names):
            for col, v in zip(rows, (f"{self.layer}:{n}", self.layer, self.kind, n, self.read[i].tolist(),
                                     self.write[i].tolist(), None if enc is None else enc[i].tolist(),
                                     None if bias is None else float(bias[i]))):
                rows[col].append(v)
        return rows

    def header(self) -> dict:
        """JSON-able parameters of the set (offset, and the dictionary's biases, k and scale)."""
        return {"layer": self.layer, "kind": self.kind, "offset": self.offset.tolist(),
                **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.params.items()
                   if k not in ("encoder", "b_enc")}}


# ---------------------------------------------------------------------------- factories
def from_factorization(f) -> DirectionSet:
    """The factors of a :class:`~.factorize.Factorization` (NMF codes by NNLS, PCA by projection)."""
    comps = np.asarray(f.components, dtype=np.float32)
    names = [a.rsplit(":", 1)[1] for a in f.addresses()]
    if f.method == "pca":
        return DirectionSet(f.layer, "pca", names, comps, comps, np.asarray(f.mean, dtype=np.float32))
    return _nmf_set(f.layer, names, comps, f.seed)


def _nmf_set(layer, names, comps, seed=0) -> DirectionSet:
    from .factorize import _nnls

    def codes(rows: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(_nnls(rows.double().clamp_min(0).numpy(), comps.astype(np.float64), seed)).float()

    return DirectionSet(layer, "nmf", names, comps, comps, np.zeros(comps.shape[1], np.float32),
                        params={"seed": seed}, _codes=codes)


def from_dictionary(d) -> DirectionSet:
    """The features of a :class:`~.sae.Dictionary`: TopK codes, decoder columns as written directions."""
    enc = d.encoder.detach().float()
    read = (enc / enc.norm(dim=1, keepdim=True).clamp_min(1e-12)).numpy()
    write = (d.decoder.detach().float().T * d.scale).numpy()
    names = [f"sae{i}" for i in range(d.features)]
    params = {"b_enc": d.b_enc.detach().float().numpy(), "b_dec": d.b_dec.detach().float().numpy(),
              "k": int(d.k), "scale": float(d.scale), "encoder": enc.numpy()}
    return DirectionSet(d.layer, "sae", names, read, write, (d.b_dec.detach().float() * d.scale).numpy(),
                        params=params, _codes=lambda rows: d.encode(rows))


def from_vectors(layer: str, vectors, *, kind: str = "dir", names: Sequence[str] | None = None) -> DirectionSet:
    """User directions (or random ones): scored by the dot product with the unit vector."""
    v = np.atleast_2d(np.asarray(vectors, dtype=np.float32))
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    if (norm == 0).any():
        raise OptionError("A direction cannot be the zero vector.")
    names = list(names) if names is not None else [direction_id(row) for row in v]
    unit = v / norm
    return DirectionSet(layer, kind, names, unit, unit, np.zeros(v.shape[1], np.float32))


def random_directions(layer: str, channels: int, n: int, seed: int = 0) -> DirectionSet:
    """``n`` directions uniform on the sphere (Gaussian, normalised): the baseline for "is the basis privileged"."""
    g = np.random.default_rng(seed).standard_normal((n, channels)).astype(np.float32)
    return from_vectors(layer, g, kind="random", names=[f"rand{i}" for i in range(n)])


def from_table(table: dict[str, list], headers: dict[str, dict]) -> list[DirectionSet]:
    """Rebuild the sets written by :meth:`DirectionSet.table` / :meth:`DirectionSet.header`.

    ``headers`` maps ``"layer:kind"`` to the header dict."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, (layer, kind) in enumerate(zip(table["layer"], table["kind"])):
        groups.setdefault((layer, kind), []).append(i)
    out = []
    for (layer, kind), idx in groups.items():
        names = [table["name"][i] for i in idx]
        read = np.asarray([table["read"][i] for i in idx], dtype=np.float32)
        write = np.asarray([table["write"][i] for i in idx], dtype=np.float32)
        h = headers.get(f"{layer}:{kind}", {})
        if kind == "nmf":
            out.append(_nmf_set(layer, names, read, int(h.get("seed", 0))))
        elif kind == "sae":
            from .sae import Dictionary

            scale = float(h["scale"])
            d = Dictionary(layer, torch.tensor([table["encoder"][i] for i in idx], dtype=torch.float32),
                           torch.from_numpy(write.T / scale).contiguous(),
                           torch.tensor([table["bias"][i] for i in idx], dtype=torch.float32),
                           torch.tensor(h["b_dec"], dtype=torch.float32), int(h["k"]), scale)
            out.append(from_dictionary(d))
        else:
            out.append(DirectionSet(layer, kind, names, read, write, np.asarray(h.get("offset", np.zeros(read.shape[1])))))
    return out
