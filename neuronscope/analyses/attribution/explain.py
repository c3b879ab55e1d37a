"""explain(): why did the network give this output for this input, and can the answer be trusted.

Captum computes each map (:mod:`.methods`); this module runs the chosen methods on a batch of
inputs with batch sizes chosen from the model's measured cost and free memory (:mod:`.batching`),
then attaches the evidence: the completeness error of integrated gradients, deletion and
insertion curves per explanation (Petsiuk et al. 2018) and, per method, the model-randomisation
sanity check on a sample of inputs (Adebayo et al. 2018), all computed on copies of the model.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ... import imaging
from ...data import Batch, Dataset
from ...errors import InputShapeError, OptionError
from ...progress import progress_bar
from ...subject import Subject
from . import batching
from .baselines import make_baseline
from .methods import DEFAULT_IMAGE, DEFAULT_VECTOR, METHODS, Context, Method, get_method, input_ids
from .targets import Target, resolve_target
from .trust import DeletionInsertion, RandomisationCheck, deletion_insertion, randomisation_check
from ...notebook import NotebookMixin

#: A method whose maps keep at least this rank correlation after every weight is randomised is
#: flagged: its maps do not depend on what the model learned.
RANDOMISATION_THRESHOLD = 0.5
#: Integrated gradients whose attributions miss f(x) - f(baseline) by more than this share get a
#: warning: too few steps for this model.
COMPLETENESS_TOLERANCE = 0.05


@dataclass
class MethodResult:
    """One method's maps for every input, with the numbers that say how far to trust them."""

    method: Method
    maps: torch.Tensor  # (N, *input_shape), or (N, H, W) for layer methods
    layer: str | None = None
    completeness: np.ndarray | None = None  # (N,) |sum of attributions - (f(x) - f(baseline))|
    completeness_rel: np.ndarray | None = None  # the same over |f(x) - f(baseline)| (floored: see explain)
    curves: DeletionInsertion | None = None
    randomisation: RandomisationCheck | None = None
    batch: object | None = None  # the batching choice (BatchChoice) when the method batches
    seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.method.name

    @property
    def signed(self) -> bool:
        return self.method.signed

    def pixel_maps(self) -> np.ndarray:
        """(N, H, W) for images (channels summed), (N, F) for vectors."""
        m = self.maps.detach().double()
        if m.dim() == 4:
            m = m.sum(1)
        return m.cpu().numpy()


@dataclass
class Explanation(NotebookMixin):
    """Attribution maps for a batch of inputs, one entry per method (``explanation["occlusion"]``)."""

    ids: list[str]
    x: torch.Tensor  # raw inputs
    target: Target
    scores: np.ndarray  # (N,) the explained number f(x)
    baseline_scores: np.ndarray  # (N,) f(baseline)
    baseline: str
    results: dict[str, MethodResult]
    predicted: list[str] | None  # predicted class names (classifiers)
    confidence: np.ndarray | None  # probability of the predicted class
    labels: list[str | None] | None  # true class names when known
    value_range: tuple[float, float] = (0.0, 1.0)
    columns: list[str] | None = None
    options: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def __getitem__(self, method: str) -> MethodResult:
        if method not in self.results:
            raise KeyError(f"{method!r} was not run; this explanation has {list(self.results)}")
        return self.results[method]

    def __iter__(self):
        return iter(self.results.values())

    def __len__(self) -> int:
        return len(self.ids)

    @classmethod
    def concat(cls, parts: Sequence["Explanation"]) -> "Explanation":
        """Explanations of consecutive chunks of inputs as one (what ``RayEngine.explain`` gathers):
        maps, scores, completeness and curves joined in order. The randomisation check is the
        first chunk's: one call also runs it on its first inputs only."""
        first = parts[0]
        if len(parts) == 1:
            return first

        def cat(values):
            return None if any(v is None for v in values) else np.concatenate([np.asarray(v) for v in values])

        results = {}
        for name, r in first.results.items():
            rs = [p.results[name] for p in parts]
            results[name] = dataclasses.replace(
                r, maps=torch.cat([q.maps for q in rs]), completeness=cat([q.completeness for q in rs]),
                completeness_rel=cat([q.completeness_rel for q in rs]), curves=_concat_curves([q.curves for q in rs]),
                seconds=sum(q.seconds for q in rs))
        target = dataclasses.replace(first.target, index=[i for p in parts for i in p.target.index],
                                     labels=[label for p in parts for label in p.target.labels])
        return dataclasses.replace(
            first, ids=[i for p in parts for i in p.ids], x=torch.cat([p.x for p in parts]), target=target,
            scores=cat([p.scores for p in parts]), baseline_scores=cat([p.baseline_scores for p in parts]),
            results=results, predicted=None if first.predicted is None else [c for p in parts for c in p.predicted],
            confidence=cat([p.confidence for p in parts]),
            labels=None if first.labels is None else [c for p in parts for c in p.labels],
            warnings=list(dict.fromkeys(w for p in parts for w in p.warnings)), seconds=sum(p.seconds for p in parts))

    @property
    def is_image(self) -> bool:
        return self.x.dim() == 4

    # ------------------------------------------------------------------ measurements
    def mass_in(self, box: Sequence[int]) -> dict[str, np.ndarray]:
        """Share of each map's attribution mass inside ``box = [y0, x0, y1, x1]`` (input pixels,
        end exclusive), per method, (N,): the energy-based pointing game of Score-CAM (Wang et al.
        2020). Signed maps count their positive part (evidence *for* the target)."""
        y0, x0, y1, x1 = (int(v) for v in box)
        out = {}
        for name, r in self.results.items():
            m = r.pixel_maps()
            m = np.clip(m, 0, None) if r.signed else np.abs(m)
            total = m.reshape(len(m), -1).sum(1)
            inside = m[:, y0:y1, x0:x1].reshape(len(m), -1).sum(1)
            out[name] = np.divide(inside, total, out=np.zeros_like(inside), where=total > 0)
        return out

    def flagged(self) -> list[str]:
        """Methods whose maps barely changed when the model's weights were randomised."""
        return [n for n, r in self.results.items() if r.randomisation is not None and r.randomisation.flagged]

    # ------------------------------------------------------------------ pictures
    def overlay(self, method: str, i: int, size: int = 128) -> np.ndarray:
        """Input ``i`` in grey with method's map over it (diverging colours when signed)."""
        return overlay(self.x[i].cpu().numpy(), self[method].pixel_maps()[i], self.value_range, self[method].signed,
                       size=size)

    def grid(self, size: int = 96) -> np.ndarray:
        """Rows of inputs, columns of methods (the input first)."""
        tiles = []
        for i in range(len(self)):
            tiles.append(_resize(imaging.input_rgb(self.x[i].cpu().numpy(), self.value_range), size))
            tiles += [self.overlay(name, i, size) for name in self.results]
        return imaging.tile_grid(np.stack(tiles), ncols=1 + len(self.results), pad=2)

    def _repr_png_(self):
        if not self.is_image:
            return None
        return imaging.png_bytes(self.grid())

    # ------------------------------------------------------------------ the store
    def tables(self) -> dict[str, dict[str, list]]:
        rows = []
        for name, r in self.results.items():
            pix = r.pixel_maps()
            for i, id_ in enumerate(self.ids):
                row = {"index": i, "id": id_, "method": name, "target": self.target.labels[i],
                       "target_index": int(self.target.index[i]),
                       "predicted": self.predicted[i] if self.predicted else None,
                       "label": self.labels[i] if self.labels else None,
                       "score": float(self.scores[i]), "baseline_score": float(self.baseline_scores[i]),
                       "completeness": None if r.completeness is None else float(r.completeness[i]),
                       "completeness_rel": None if r.completeness_rel is None else float(r.completeness_rel[i]),
                       "layer": r.layer, "map": pix[i].astype(np.float32).reshape(-1).tolist(),
                       "map_shape": list(pix[i].shape)}
                row.update(_curve_row(r.curves, i))
                rows.append(row)
        out = {"explanations": _columns(rows)}
        checks = [dict(r.randomisation.row()) for r in self.results.values() if r.randomisation is not None]
        if checks:
            out["randomisation"] = _columns(checks)
        batches = [{"method": n, "size": r.batch.size, "rows": r.batch.rows, "source": r.batch.source,
                    "reason": r.batch.reason} for n, r in self.results.items() if r.batch is not None]
        if batches:
            out["batching"] = _columns(batches)
        return out

    def images(self) -> dict[str, np.ndarray]:
        if not self.is_image:
            return {}
        out = {}
        for i in range(len(self)):
            out[f"inputs/{i}"] = _resize(imaging.input_rgb(self.x[i].cpu().numpy(), self.value_range), 128)
            for name in self.results:
                out[f"maps/{i}-{name}"] = self.overlay(name, i)
        return out

    def summary(self) -> dict:
        methods = []
        for name, r in self.results.items():
            entry = {"name": name, "title": r.method.title, "signed": r.signed, "layer": r.layer,
                     "seconds": round(r.seconds, 3)}
            if r.completeness_rel is not None:
                entry["completeness_rel_max"] = float(np.max(r.completeness_rel))
            if r.curves is not None:
                d, ins = r.curves.gains()
                entry["deletion_gain"] = float(np.mean(d))
                entry["insertion_gain"] = float(np.mean(ins))
            if r.randomisation is not None:
                entry.update(randomisation=r.randomisation.final, randomisation_flagged=r.randomisation.flagged,
                             randomisation_mode=r.randomisation.mode)
            if r.batch is not None:
                entry["batch"] = {"size": r.batch.size, "source": r.batch.source}
            methods.append(entry)
        return {"n": len(self), "baseline": self.baseline, "target_kind": self.target.kind, "methods": methods,
                "flagged": self.flagged(), "findings": self.findings(), "warnings": self.warnings,
                "options": self.options, "seconds": round(self.seconds, 2), "image": self.is_image,
                "columns": self.columns}

    def findings(self) -> list[str]:
        out = []
        for name, r in self.results.items():
            rc = r.randomisation
            if rc is not None and rc.flagged:
                out.append(f"{r.method.title}: its maps change little when the model's weights are randomised "
                           f"(rank correlation {rc.final:.2f} with the trained model's maps; flagged from "
                           f"{rc.threshold}): much of what they show comes from the input itself, not from what "
                           "the model learned.")
            if r.curves is not None:
                d, ins = r.curves.gains()
                if np.mean(d) < 0 and np.mean(ins) < 0:
                    out.append(f"{r.method.title}: removing the pixels it ranks first lowers the score no faster "
                               "than removing random ones (deletion and insertion both no better than random).")
        return out


def _curve_row(curves: DeletionInsertion | None, i: int) -> dict:
    keys = ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc")
    if curves is None:
        return dict.fromkeys(keys)
    return {k: float(getattr(curves, k)[i]) for k in keys}


def _columns(rows: list[dict]) -> dict[str, list]:
    keys = list(rows[0]) if rows else []
    return {k: [r.get(k) for r in rows] for k in keys}


def _resize(rgb: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.NEAREST))


def overlay(x: np.ndarray, pixel_map: np.ndarray, value_range, signed: bool, size: int = 128,
            alpha: float = 0.75) -> np.ndarray:
    """A raw (C, H, W) input shown in grey with an (H, W) map over it: blue-white-red for signed
    maps (zero is transparent), dark-to-bright for magnitudes; one scale per picture."""
    grey = imaging.input_rgb(x, value_range).astype(np.float64).mean(-1, keepdims=True)
    grey = 0.35 * grey + 0.65 * 255  # faded, so that colour reads as the map
    m = np.asarray(pixel_map, dtype=np.float64)
    if signed:
        colour = imaging.diverging_colormap(m).astype(np.float64)
        scale = imaging.max_abs(m)
        weight = np.clip(np.abs(m) / scale, 0, 1)[..., None] if scale > 0 else np.zeros((*m.shape, 1))
    else:
        m = np.clip(m, 0, None)
        colour = imaging.magnitude_colormap(m).astype(np.float64)
        top = m.max() if m.size else 0.0
        weight = np.clip(m / top, 0, 1)[..., None] if top > 0 else np.zeros((*m.shape, 1))
    rgb = grey * (1 - alpha * weight) + colour * (alpha * weight)
    return _resize(np.rint(rgb).clip(0, 255).astype(np.uint8), size)


# ---------------------------------------------------------------------------------- the function
def _inputs(subject: Subject, inputs, data, ids) -> tuple[torch.Tensor, list[str], list | None]:
    """Raw input tensor, ids and labels (or None) from a tensor, a Batch, ids in data, or a Dataset."""
    labels = None
    if isinstance(inputs, Batch):
        x, ids, y = inputs.x, inputs.ids, inputs.y
        labels = None if y is None else [int(v) for v in y]
    elif isinstance(inputs, Dataset):
        b = Batch.cat(list(inputs.batches(256, limit=64)))
        x, ids, labels = b.x, b.ids, None if b.y is None else [int(v) for v in b.y]
    elif isinstance(inputs, (list, tuple)) and inputs and all(isinstance(i, str) for i in inputs):
        if data is None:
            raise OptionError("Inputs given as ids need data=... to read them from.")
        b = data.get(list(inputs))
        x, ids, labels = b.x, b.ids, None if b.y is None else [int(v) for v in b.y]
    else:
        x = torch.as_tensor(np.asarray(inputs) if not isinstance(inputs, torch.Tensor) else inputs)
        if tuple(x.shape) == subject.input_shape:
            x = x[None]
        if tuple(x.shape[1:]) != subject.input_shape:
            raise InputShapeError(f"Inputs of shape {tuple(x.shape)} do not fit this model: expected "
                                  f"(N, {', '.join(map(str, subject.input_shape))}) raw inputs.")
        ids = list(ids) if ids is not None else input_ids(len(x))
    if len(ids) != len(x):
        raise OptionError(f"{len(ids)} ids for {len(x)} inputs.")
    return x.to(device=subject.device, dtype=subject.dtype), list(ids), labels


def _batch_key(subject: Subject, kind: str, n: int) -> tuple:
    # Keyed by architecture, not object identity: randomised copies reuse the calibration.
    params = sum(p.numel() for p in subject.model.parameters())
    return (type(subject.model).__qualname__, params, subject.input_shape, n, str(subject.dtype),
            str(subject.device), kind)


GRADIENT_KINDS = ("integrated_gradients", "smoothgrad", "smoothgrad_sq", "vargrad", "gradient_shap")


def _chooser(subject: Subject, target: Target, x: torch.Tensor, override: int | None, record: dict):
    model = subject.model if subject.hookable else None  # TorchScript modules take no hooks

    def choose(kind: str, evaluations: int):
        key = _batch_key(subject, kind, len(x))
        if kind in GRADIENT_KINDS:
            c = batching.gradient_batch(target.forward, x, evaluations=evaluations, override=override, key=key,
                                        model=model)
        else:
            per_eval = None if override is None else max(1, override // len(x))  # rows -> perturbations per pass
            c = batching.perturbation_batch(target.forward, x, perturbations=evaluations, override=per_eval,
                                            key=key, model=model)
        record[kind] = c
        return c
    return choose


def explain(subject: Subject, inputs, target="predicted", method: str | Sequence[str] | None = None, *,
            data=None, ids: Sequence[str] | None = None, baseline="auto", layer: str | None = None,
            n_steps: int = 50, samples: int = 50, noise: float = 0.15, window: int | None = None,
            stride: int | None = None, batch_size: int | None = None, curves: bool = True,
            randomisation: bool = True, check_sample: int = 16, allow_guided: bool = False,
            unit_reduce: str = "max", chunk: int = 32, seed: int = 0, progress: bool = False) -> Explanation:
    """Attribution maps for ``inputs`` with the evidence to trust them.

    Parameters
    ----------
    inputs : tensor (N, *input_shape) or one input, a :class:`~neuronscope.data.Batch`, a list of
        example ids in ``data``, or a dataset (its first 64 examples). Raw values, as in the data.
    target : ``"predicted"`` (default), a class index or name, one target per input (a list), an
        output index (regression), or a unit ``"layer:channel"`` / ``"layer:channel@y,x"`` (which
        parts of this input make the unit fire).
    method : one name or a list (see :data:`~.methods.METHODS`); by default integrated
        gradients, SmoothGrad, Grad-CAM and occlusion for images, integrated gradients, feature
        ablation and gradient SHAP for vectors. Guided methods need ``allow_guided=True``.
    baseline : ``"zero"``, ``"blur"``, ``"mean"`` (needs data) or a tensor; ``"auto"`` is the
        data mean when data is given, else zero.
    batch_size : rows per forward pass inside the methods; by default chosen from the model's
        measured cost and free memory (see :mod:`.batching`).
    curves, randomisation : deletion/insertion curves per explanation; the model-randomisation
        sanity check per method on ``check_sample`` inputs (runs on copies of the model).
    ids : names for tensor inputs (default ``input-0``, ``input-1``, ...).
    seed : the sampled methods (SmoothGrad, VarGrad, gradient SHAP) draw each example's noise from
        (seed, example id): its map does not depend on the batch it came in or the pass size.
    """
    t0 = time.perf_counter()
    image = len(subject.input_shape) == 3
    names = [method] if isinstance(method, str) else list(method or (DEFAULT_IMAGE if image else DEFAULT_VECTOR))
    if method is None and (not subject.hookable or subject.fixed_batch):
        # TorchScript: no layer to read for Grad-CAM; a fixed-batch export: Captum's layer hooks
        # would see only the last padded chunk
        names = [n for n in names if not METHODS[n].layer]
    methods = [get_method(n, allow_guided=allow_guided, image=image) for n in names]
    for opt, v in (("n_steps", n_steps), ("samples", samples), ("chunk", chunk)):
        if int(v) < 1:
            raise OptionError(f"{opt} must be at least 1, got {v}.")
    if batch_size is not None and int(batch_size) < 1:
        raise OptionError(f"batch_size must be a positive number of rows, got {batch_size}.")
    x, ids, label_idx = _inputs(subject, inputs, data, ids)
    n = len(x)
    if baseline == "auto":
        baseline = "mean" if data is not None else "zero"

    with subject.borrowed():
        with torch.no_grad():
            predicted = confidence = None
            if subject.task == "classification":
                p = torch.cat([subject.probabilities(x[s:s + 256]) for s in range(0, n, 256)])
                confidence, pred_idx = p.max(1)
                predicted, confidence = [subject.classes[int(k)] for k in pred_idx], confidence.cpu().numpy()
            tgt = resolve_target(subject, target, n, predicted=None if predicted is None else pred_idx.tolist(),
                                 unit_reduce=unit_reduce)
            base, base_label = make_baseline(baseline, x, data=data, input_shape=subject.input_shape)
            scores = torch.cat([tgt.part(s, s + chunk).score(x[s:s + chunk]) for s in range(0, n, chunk)]).cpu().numpy()
            base_scores = torch.cat([tgt.part(s, s + chunk).score(base[s:s + chunk])
                                     for s in range(0, n, chunk)]).cpu().numpy()

        results = {}
        bar = progress_bar(total=len(methods) * ((n + chunk - 1) // chunk), desc="attribution", unit="chunk",
                           enabled=progress)
        for m in methods:
            t = time.perf_counter()
            parts, extras, record = [], [], {}
            for s in range(0, n, chunk):
                part = tgt.part(s, s + chunk)
                xs = x[s:s + chunk].detach().clone().requires_grad_(True)  # Captum would warn and do the same
                ctx = Context(subject, part, xs, base[s:s + chunk], layer=layer, n_steps=n_steps,
                              samples=samples, noise=noise, window=window, stride=stride, seed=seed,
                              keys=ids[s:s + chunk], batch=_chooser(subject, part, xs, batch_size, record))
                maps, extra = m.run(ctx)
                parts.append(maps.detach())
                extras.append(extra)
                bar.update(1)
            r = MethodResult(m, torch.cat(parts), layer=extras[0].get("layer"), batch=next(iter(record.values()), None))
            if m.complete:
                delta = torch.cat([e["delta"] for e in extras]).abs().cpu().numpy()
                gap = np.abs(scores - base_scores)
                r.completeness = delta
                # Relative to |f(x) - f(baseline)|, floored at a tenth of the batch's median gap: an
                # input whose output barely differs from the baseline's would turn any rounding into
                # a huge share.
                r.completeness_rel = delta / np.maximum(gap, max(0.1 * float(np.median(gap)), 1e-12))
            r.seconds = time.perf_counter() - t
            results[m.name] = r
        bar.close()

        warnings = []
        for r in results.values():
            if r.completeness_rel is not None and float(np.max(r.completeness_rel)) > COMPLETENESS_TOLERANCE:
                warnings.append(f"{r.method.title}: the attributions miss f(x) - f(baseline) by up to "
                                f"{float(np.max(r.completeness_rel)):.1%}; raise n_steps for this model.")
        if curves:
            with torch.no_grad():
                for r in results.values():
                    r.curves = deletion_insertion(_row_score(tgt), x, _curve_maps(r), base)
        if randomisation and not subject.hookable:
            warnings.append("The randomisation sanity check was skipped: a TorchScript model's layers cannot be "
                            "reached to randomise them (give the model as file.py:factory or a .pt2 export).")
        elif randomisation:
            k = min(check_sample, n)
            bar = progress_bar(total=len(methods), desc="randomisation check", unit="method", enabled=progress)
            for m in methods:
                results[m.name].randomisation = _randomisation(subject, m, tgt.part(0, k), x[:k], ids[:k], base[:k],
                                                               layer, n_steps, samples, noise, window, stride, seed,
                                                               batch_size)
                bar.update(1)
            bar.close()
    labels = None
    if label_idx is not None and subject.task == "classification":
        labels = [subject.classes[k] if 0 <= k < len(subject.classes) else None for k in label_idx]
    options = {"methods": names, "baseline": base_label, "n_steps": n_steps, "samples": samples, "noise": noise,
               "window": window, "unit_reduce": unit_reduce, "seed": seed, "check_sample": min(check_sample, n)}
    return Explanation(ids, x.detach(), tgt, scores, base_scores, base_label, results, predicted, confidence, labels,
                       subject.value_range, subject.columns, options, warnings, time.perf_counter() - t0)


def _row_score(t: Target):
    """score(rows, which): row r is a version of input which[r], scored for that input's target."""
    index = torch.as_tensor(t.index)

    def score(rows: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
        out = t.forward(rows)
        return out[torch.arange(len(out)), index.to(out.device)[which]]

    return score


def _concat_curves(curves: Sequence[DeletionInsertion | None]) -> DeletionInsertion | None:
    if any(c is None for c in curves):
        return None
    joined = {}
    for f in dataclasses.fields(DeletionInsertion):
        values = [getattr(c, f.name) for c in curves]
        if f.name == "fractions" or any(v is None for v in values):
            joined[f.name] = values[0] if f.name == "fractions" else None
        else:
            joined[f.name] = np.concatenate(values)
    return DeletionInsertion(**joined)


def _curve_maps(r: MethodResult) -> torch.Tensor:
    m = r.maps
    if not r.signed:
        m = m.abs()
    return m


def _randomisation(subject, m: Method, tgt: Target, x, ids, base, layer, n_steps, samples, noise, window, stride,
                   seed, batch_size) -> RandomisationCheck:
    def attribute(sub: Subject, xs: torch.Tensor, idx: list[int]) -> torch.Tensor:
        t = dataclasses.replace(tgt.on(sub), index=list(idx))
        xs = xs.detach().clone().requires_grad_(True)
        ctx = Context(sub, t, xs, base[: len(xs)], layer=layer, n_steps=n_steps, samples=samples, noise=noise,
                      window=window, stride=stride, seed=seed, keys=ids[: len(xs)],
                      batch=_chooser(sub, t, xs, batch_size, {}))
        with sub.borrowed():
            return m.run(ctx)[0].detach()

    return randomisation_check(subject, attribute, x, list(tgt.index), method=m.name, seed=seed,
                               threshold=RANDOMISATION_THRESHOLD)
