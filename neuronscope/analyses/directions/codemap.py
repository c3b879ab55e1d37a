"""A map of the codes: a 2-D layout of a late layer's activations over the data (cs231n's t-SNE view).

Each example's activation at one layer (by default the penultimate representation) is reduced
over its spatial positions (``mean`` or ``max``) to a code of ``C`` numbers. The codes are laid
out in 2-D twice: by PCA (a linear projection, whose two explained-variance ratios say how much
of the picture it shows) and by t-SNE (a non-linear layout that keeps neighbourhoods, on the
first 50 principal components when ``C > 50``). Look-alike inputs, classes, confusions and
shortcut clusters show up as groups of points.

What the layout shows is measured in the code space itself, not on the picture:

* **kNN agreement**: for each example, the share of its ``k = 10`` nearest neighbours (Euclidean,
  on the codes) with the same label (and, separately, the same predicted class), averaged over
  the examples. ``chance`` is what the label agreement would be if labels were unrelated to the
  codes (the sum of the squared class shares).
* **trustworthiness** of the t-SNE layout (scikit-learn, ``n_neighbors = 10``): 1.0 when the
  layout's neighbours are neighbours in the code space too; well below 0.9 means clusters on
  the picture may not be clusters in the codes.

Thresholds used by :meth:`CodeMap.finding` (on the label agreement ``a``, or the prediction
agreement when the data has no labels): ``a >= 0.8`` "the classes form separate clusters";
``a <= 0.5`` "the classes are mixed together"; in between "the classes overlap in part". The
chance level is quoted with the last two. A trustworthiness under 0.8 adds a warning that the
t-SNE picture is loose.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from ...errors import NeuronscopeError, OptionError
from ...imaging import input_rgb
from ..stream import stream
from ...notebook import NotebookMixin

REDUCES = ("mean", "max")
#: Neighbours for the kNN agreements and the trustworthiness (fewer on tiny data).
NEIGHBOURS = 10
#: t-SNE runs on at most this many principal components of the codes.
TSNE_DIMS = 50
#: Longest side of a thumbnail, in pixels.
THUMB_PX = 24
#: Side of the pictures :meth:`CodeMap.images` draws.
CANVAS_PX = 900
#: Fewest examples a map is drawn from.
MIN_EXAMPLES = 5
#: Tableau 10: class ``i`` gets ``PALETTE[i % 10]``.
PALETTE = ("#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
           "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac")
#: Border for examples with neither label nor prediction.
NO_CLASS = "#57606a"

SEPARATE, MIXED, LOOSE = 0.8, 0.5, 0.8


def colour(index: int | None) -> str:
    """The palette's colour for a class index (grey for None)."""
    return NO_CLASS if index is None or index < 0 else PALETTE[int(index) % len(PALETTE)]


@dataclass
class CodeMap(NotebookMixin):
    """A layer's codes over the data laid out in 2-D, with how faithful and how clustered they are."""

    layer: str
    ids: list[str]
    labels: np.ndarray | None  # (N,) int64 class indices, or None without classification labels
    predictions: np.ndarray | None  # (N,) int64 predicted classes, or None for a regression model
    classes: list[str] | None  # names for the class indices
    codes: np.ndarray  # (N, C) float32
    pca: np.ndarray  # (N, 2)
    tsne: np.ndarray  # (N, 2)
    pca_explained: np.ndarray  # (2,) explained variance ratios of the two components
    knn_label_agreement: float | None
    knn_prediction_agreement: float | None
    trustworthiness: float | None
    thumbs: np.ndarray | None  # (N, h, w, 3) uint8 for image inputs
    n: int
    reduce: str
    notes: list[str] = field(default_factory=list)
    k: int = NEIGHBOURS  # neighbours actually used for the agreements
    perplexity: float = 30.0  # perplexity actually used
    seed: int = 0
    spatial: tuple[int, ...] = ()

    # ------------------------------------------------------------------ derived numbers
    @property
    def misclassified(self) -> float | None:
        """Share of examples whose prediction differs from the label (None without both)."""
        if self.labels is None or self.predictions is None:
            return None
        return float(np.mean(self.labels != self.predictions))

    @property
    def chance_agreement(self) -> float | None:
        """The expected label agreement if labels were unrelated to the codes: sum of squared shares."""
        if self.labels is None:
            return None
        _, counts = np.unique(self.labels, return_counts=True)
        share = counts / counts.sum()
        return float(np.sum(share ** 2))

    def class_name(self, index) -> str | None:
        if index is None:
            return None
        i = int(index)
        return self.classes[i] if self.classes is not None and 0 <= i < len(self.classes) else str(i)

    def colour_indices(self) -> tuple[str | None, np.ndarray | None]:
        """What the borders are coloured by ("label", "prediction" or None) and the class indices."""
        if self.labels is not None:
            return "label", self.labels
        if self.predictions is not None:
            return "prediction", self.predictions
        return None, None

    def palette(self) -> dict[str, str]:
        """Class name -> hex colour, for the classes that occur in the labels or predictions."""
        present = set()
        for a in (self.labels, self.predictions):
            if a is not None:
                present.update(int(v) for v in np.unique(a))
        return {self.class_name(i): colour(i) for i in sorted(present)}

    def per_class(self) -> list[dict]:
        """Per labelled class: count, kNN agreement, misclassified share and the main confusion."""
        if self.labels is None:
            return []
        same = _neighbour_share(self.codes, self.labels, self.k)
        out = []
        for c in np.unique(self.labels):
            mask = self.labels == c
            row = {"class": self.class_name(c), "n": int(mask.sum()),
                   "knn_label_agreement": float(same[mask].mean()),
                   "misclassified": None, "confused_with": None}
            if self.predictions is not None:
                wrong = self.predictions[mask][self.predictions[mask] != c]
                row["misclassified"] = float(len(wrong) / mask.sum())
                if len(wrong):
                    vals, counts = np.unique(wrong, return_counts=True)
                    row["confused_with"] = self.class_name(vals[np.argmax(counts)])
            out.append(row)
        return out

    # ------------------------------------------------------------------ Result
    def tables(self) -> dict[str, dict[str, list]]:
        """One row per example: its classes and both 2-D positions."""
        n = self.n
        labels = [self.class_name(v) for v in self.labels] if self.labels is not None else [None] * n
        preds = [self.class_name(v) for v in self.predictions] if self.predictions is not None else [None] * n
        if self.labels is not None and self.predictions is not None:
            correct = [bool(a == b) for a, b in zip(self.labels, self.predictions)]
        else:
            correct = [None] * n
        return {"points": {
            "id": list(self.ids),
            "label": labels,
            "prediction": preds,
            "correct": correct,
            "pca_x": [float(v) for v in self.pca[:, 0]],
            "pca_y": [float(v) for v in self.pca[:, 1]],
            "tsne_x": [float(v) for v in self.tsne[:, 0]],
            "tsne_y": [float(v) for v in self.tsne[:, 1]],
        }}

    def images(self) -> dict[str, Image.Image]:
        """For image inputs: each thumbnail pasted at its t-SNE / PCA position, framed in its class colour."""
        if self.thumbs is None:
            return {}
        return {"codemap/tsne": self.picture("tsne"), "codemap/pca": self.picture("pca")}

    def picture(self, which: str = "tsne", size: int = CANVAS_PX) -> Image.Image:
        """A ``size`` x ``size`` white canvas with every thumbnail at its scaled position (later
        examples over earlier ones), each with a 2-pixel border in its label's colour."""
        if self.thumbs is None:
            raise OptionError("This map has no thumbnails (not image inputs, or thumbnails=False).")
        if which not in ("tsne", "pca"):
            raise OptionError(f"which must be 'tsne' or 'pca'; got {which!r}.")
        xy = self.tsne if which == "tsne" else self.pca
        th, tw = self.thumbs.shape[1:3]
        bw, bh = tw + 4, th + 4
        canvas = Image.new("RGB", (size, size), "white")
        pos = _fit(xy, size - bw, size - bh)
        _, idx = self.colour_indices()
        for i in range(self.n):
            tile = Image.new("RGB", (bw, bh), colour(None if idx is None else int(idx[i])))
            tile.paste(Image.fromarray(self.thumbs[i]), (2, 2))
            canvas.paste(tile, (int(pos[i, 0]), int(pos[i, 1])))
        return canvas

    def summary(self) -> dict:
        """JSON-able headline numbers and a one-sentence ``finding``."""
        by, _ = self.colour_indices()
        return {
            "layer": self.layer,
            "n": int(self.n),
            "channels": int(self.codes.shape[1]),
            "spatial": list(self.spatial),
            "reduce": self.reduce,
            "pca_explained": [float(v) for v in self.pca_explained],
            "knn_k": int(self.k),
            "knn_label_agreement": _maybe(self.knn_label_agreement),
            "knn_prediction_agreement": _maybe(self.knn_prediction_agreement),
            "chance_agreement": _maybe(self.chance_agreement),
            "trustworthiness": _maybe(self.trustworthiness),
            "misclassified": _maybe(self.misclassified),
            "perplexity": float(self.perplexity),
            "seed": int(self.seed),
            "coloured_by": by,
            "palette": self.palette(),
            "per_class": self.per_class(),
            "thumbnails": self.thumbs is not None,
            "notes": list(self.notes),
            "finding": self.finding(),
        }

    def finding(self) -> str:
        """One sentence from the measured numbers (thresholds in the module docstring)."""
        k = self.k
        lab, pred = self.knn_label_agreement, self.knn_prediction_agreement
        if lab is not None:
            head = (f"On {self.layer}'s codes, {lab:.0%} of each input's {k} nearest neighbours share its label"
                    + (f" ({pred:.0%} its prediction)" if pred is not None else ""))
            a, what, chance = lab, "the classes", self.chance_agreement
        elif pred is not None:
            head = f"On {self.layer}'s codes, {pred:.0%} of each input's {k} nearest neighbours share its prediction"
            a, what = pred, "the predicted classes"
            _, counts = np.unique(self.predictions, return_counts=True)
            chance = float(np.sum((counts / counts.sum()) ** 2))
        else:
            ev = float(np.sum(self.pca_explained))
            sentence = (f"On {self.layer}'s codes of {self.n} inputs (no classes to compare), the first two "
                        f"principal components explain {ev:.0%} of the variance")
            return sentence + self._loose() + "."
        if a >= SEPARATE:
            tail = f"{what} form separate clusters"
        elif a <= MIXED:
            tail = f"{what} are mixed together (chance: {chance:.0%})"
        else:
            tail = f"{what} overlap in part (chance: {chance:.0%})"
        return f"{head}: {tail}{self._loose()}."

    def _loose(self) -> str:
        t = self.trustworthiness
        if t is None or t >= LOOSE:
            return ""
        return f"; the t-SNE picture is loose (trustworthiness {t:.2f}), trust the numbers over it"


def code_map(subject, data, layer: str | None = None, *, limit: int | None = 1000, reduce: str = "mean",
             perplexity: float = 30.0, seed: int = 0, batch_size: int = 64, thumbnails: bool = True,
             progress: bool = False) -> CodeMap:
    """Lay out ``layer``'s codes over up to ``limit`` examples of ``data`` in 2-D (PCA and t-SNE).

    ``layer=None`` takes the last of ``subject.default_layers()`` before the final layer (the
    penultimate representation), or the final layer when it is the only one. Each example's
    activation is reduced over its spatial positions by ``reduce`` (``"mean"`` or ``"max"``).
    Labels are kept when the data has classification labels; predictions for classification
    models; a :data:`THUMB_PX` thumbnail per example for image inputs (``thumbnails``).
    All codes are held in memory (``limit`` x channels) and t-SNE is quadratic-ish in ``limit``:
    a few thousand examples is the practical top.
    """
    reduce = str(reduce).lower()
    if reduce not in REDUCES:
        raise OptionError(f"reduce must be one of {', '.join(REDUCES)}; got {reduce!r}.")
    if limit is not None and int(limit) < MIN_EXAMPLES:
        raise OptionError(f"limit must be at least {MIN_EXAMPLES} for a map of the codes; got {limit}.")
    perplexity = float(perplexity)
    if not perplexity > 0:
        raise OptionError(f"perplexity must be positive; got {perplexity}.")
    name = _choose_layer(subject, layer)
    info = subject.layer(name)
    if info.channels is None:
        raise OptionError(f"Layer {name!r} has no tensor output to map.")
    classification = subject.task == "classification"
    classes = subject.classes if classification else getattr(data, "classes", None)
    labelled = getattr(data, "task", None) == "classification"
    shape = tuple(subject.input_shape)
    want_thumbs = bool(thumbnails) and len(shape) == 3 and shape[0] in (1, 3)

    ids: list[str] = []
    codes, labels, preds, thumbs = [], [], [], []
    with subject.borrowed():
        for step in stream(subject, data, [name], limit=limit, batch_size=batch_size,
                           desc=f"code map {name}", progress=progress, spread=True):
            acts = step.activations[name]
            if isinstance(acts, tuple):
                acts = acts[0]
            codes.append(_reduce(acts, reduce))
            ids.extend(step.batch.ids)
            y = step.batch.y
            if labelled and y is not None:
                labels.append(y.detach().cpu().reshape(-1).long().numpy())
            else:
                labelled = False
            if classification:
                p = subject.to_probabilities(step.logits.detach()).argmax(1)
                preds.append(p.cpu().long().numpy())
            if want_thumbs:
                thumbs.extend(_thumbnail(x, subject.value_range) for x in step.batch.x.detach().cpu().numpy())
    n = len(ids)
    if n < MIN_EXAMPLES:
        raise OptionError(f"Only {n} example{'s' if n != 1 else ''} could be read from the data; a map of "
                          f"the codes needs at least {MIN_EXAMPLES}.")
    codes = np.concatenate(codes).astype(np.float32)
    if not np.isfinite(codes).all():
        raise NeuronscopeError(f"Layer {name!r} gives non-finite activations (inf or NaN) on some examples: "
                               "its codes cannot be laid out.")
    labels = np.concatenate(labels) if labelled and labels else None
    preds = np.concatenate(preds) if classification else None
    thumbs = np.stack(thumbs) if want_thumbs else None
    notes: list[str] = []
    if limit is not None and n >= int(limit) and len(data) > n:
        notes.append(f"mapped {n} of {len(data)} examples, spread evenly over the data")

    pca, explained, spread = _pca2(codes, seed)
    k = min(NEIGHBOURS, n - 1)
    if k < NEIGHBOURS:
        notes.append(f"only {n} examples: agreements use {k} neighbours")
    used_perplexity = min(perplexity, (n - 1) / 3)
    if used_perplexity < perplexity:
        notes.append(f"perplexity lowered from {perplexity:g} to {used_perplexity:.3g} for {n} examples")
    if spread == 0.0:
        notes.append(f"{name} gives the same code on every example: nothing to lay out")
        tsne, trust = np.zeros((n, 2)), None
    else:
        tsne = _tsne(codes, used_perplexity, seed)
        kt = min(NEIGHBOURS, math.ceil(n / 2) - 1)
        from sklearn.manifold import trustworthiness

        trust = float(trustworthiness(codes.astype(np.float64), tsne, n_neighbors=kt))
        if kt < NEIGHBOURS:
            notes.append(f"trustworthiness uses {kt} neighbours on {n} examples")
    if preds is not None and len(np.unique(preds)) == 1:
        notes.append("the model predicts the same class for every mapped example: prediction agreement is 1 "
                     "by default")
    label_agree = float(_neighbour_share(codes, labels, k).mean()) if labels is not None else None
    pred_agree = float(_neighbour_share(codes, preds, k).mean()) if preds is not None else None
    return CodeMap(layer=name, ids=ids, labels=labels, predictions=preds, classes=classes, codes=codes,
                   pca=pca, tsne=tsne, pca_explained=explained, knn_label_agreement=label_agree,
                   knn_prediction_agreement=pred_agree, trustworthiness=trust, thumbs=thumbs, n=n,
                   reduce=reduce, notes=notes, k=k, perplexity=used_perplexity, seed=int(seed),
                   spatial=tuple(info.spatial))


# ------------------------------------------------------------------------------- internals


def _choose_layer(subject, layer) -> str:
    if layer is not None:
        return subject.layer(str(layer)).name  # unknown names raise the Subject's own error
    final = subject.final_layer()
    candidates = [name for name in subject.default_layers() if name != final]
    if candidates:
        return candidates[-1]
    if final is None:
        raise OptionError(f"{subject.name} has no layer with a tensor output to map: name one with layer=.")
    return final


def _reduce(acts, how: str) -> np.ndarray:
    """(N, C, *S) -> (N, C) float32 by mean or max over the positions; (N, C) as it is."""
    a = torch.as_tensor(acts).detach().float().cpu()
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim > 2:
        a = a.reshape(a.shape[0], a.shape[1], -1)
        a = a.mean(dim=2) if how == "mean" else a.amax(dim=2)
    return a.numpy().astype(np.float32, copy=False)


def _thumbnail(x: np.ndarray, value_range) -> np.ndarray:
    """A raw (C, H, W) input as an RGB uint8 thumbnail whose longest side is THUMB_PX."""
    rgb = input_rgb(x, value_range)
    h, w = rgb.shape[:2]
    scale = THUMB_PX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return rgb
    method = Image.NEAREST if scale > 1 else Image.BILINEAR
    return np.asarray(Image.fromarray(rgb).resize(size, method))


def _pca2(codes: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The codes on their first two principal components, the explained-variance ratios and the
    total variance (0.0 when the codes are constant)."""
    from sklearn.decomposition import PCA

    x = codes.astype(np.float64)
    n, c = x.shape
    total = float(x.var(axis=0).sum())
    out, explained = np.zeros((n, 2)), np.zeros(2)
    if total <= 0.0:
        return out, explained, 0.0
    m = min(2, n, c)
    model = PCA(n_components=m, random_state=seed)
    out[:, :m] = model.fit_transform(x)
    explained[:m] = model.explained_variance_ratio_
    return out, explained, total


def _tsne(codes: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = codes.astype(np.float64)
    if x.shape[1] > TSNE_DIMS:
        x = PCA(n_components=min(TSNE_DIMS, x.shape[0]), random_state=seed).fit_transform(x)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return tsne.fit_transform(x).astype(np.float64)


def _neighbour_share(codes: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
    """Per example: the share of its ``k`` nearest other examples (Euclidean) with the same class."""
    from sklearn.neighbors import NearestNeighbors

    nn = NearestNeighbors(n_neighbors=k).fit(codes.astype(np.float64))
    idx = nn.kneighbors(return_distance=False)  # no X: each point is left out of its own neighbours
    return (classes[idx] == classes[:, None]).mean(axis=1)


def _fit(xy: np.ndarray, width: float, height: float) -> np.ndarray:
    """Positions scaled (one factor for both axes, centred) into [0, width] x [0, height], y up."""
    xy = np.asarray(xy, dtype=np.float64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = hi - lo
    scale = min(width / span[0] if span[0] > 0 else math.inf, height / span[1] if span[1] > 0 else math.inf)
    if not math.isfinite(scale):
        scale = 0.0
    pos = (xy - lo) * scale
    pos += (np.array([width, height]) - span * scale) / 2
    pos[:, 1] = height - pos[:, 1]
    return pos


def _maybe(v):
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)
