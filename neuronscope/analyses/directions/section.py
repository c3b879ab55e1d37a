"""The report's "directions" section: one layer looked at as a space.

For the chosen layer: NMF factors (PCA components when the layer can go negative), a sparse
dictionary, the user's own directions, and random directions as the baseline; one examples pass
ranks real inputs for all of them and for the layer's neurons; then the class links, the change in
the loss when the layer is replaced by each reconstruction, whether the neuron basis is
privileged, and a map of the codes of the penultimate layer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from ...errors import NeuronscopeError, UnsupportedError
from .basis import BasisComparison, compare_basis
from .book import DirectionSet, from_dictionary, from_factorization, random_directions
from .examples import ADDRESSABLE, direction_examples, group_name
from .factorize import Factorization, factorize
from .sae import DictionaryMetrics, learn_dictionary
from ...notebook import NotebookMixin

#: Dictionary features that get pictures and unit pages (the rest are in the tables).
SHOWN_FEATURES = 24


def default_layer(subject, layers) -> str | None:
    """The last spatial layer after a ReLU among ``layers`` (where NMF reads as parts), else the
    last non-output layer with more than one unit."""
    final = subject.final_layer()
    infos = [subject.layer(l) for l in layers if l != final]
    infos = [i for i in infos if (i.channels or 0) > 1]
    spatial = [i for i in infos if i.spatial and subject.is_relu_like(i.name)]
    pick = spatial or [i for i in infos if subject.is_relu_like(i.name)] or infos
    return pick[-1].name if pick else None


def penultimate(subject) -> str | None:
    """The layer that feeds the output layer (what the classifier reads): the last leaf before it."""
    final = subject.final_layer()
    leaves = [i for i in subject.layers if i.is_leaf and i.output_shape]
    names = [i.name for i in leaves]
    if final not in names or names.index(final) == 0:
        return None
    return names[names.index(final) - 1]


@dataclass
class DirectionsReport(NotebookMixin):
    layer: str
    sets: list[DirectionSet]
    factorization: Factorization
    dictionary: DictionaryMetrics | None
    splices: dict  # kind -> SpliceResult
    examples: object  # ExamplesResult
    basis: BasisComparison
    links: dict  # kind -> ClassLinks
    codemap: object | None  # CodeMap
    shown: dict[str, list[int]]  # group -> units with pictures and pages
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def tables(self) -> dict[str, dict[str, list]]:
        vectors: dict[str, list] = {}
        for d in self.sets:
            for k, v in d.table().items():
                vectors.setdefault(k, []).extend(v)
        out = {"vectors": vectors, "factors": self.factorization.tables()["factors"]}
        ex = self.examples.tables()
        out.update({k: ex[k] for k in ("units", "examples", "histograms")})
        if "rows" in ex:
            out["rows"] = ex["rows"]
        if "profiles" in ex:
            out["profiles"] = ex["profiles"]
        out.update(self.basis.tables())
        links: dict[str, list] = {}
        for cl in self.links.values():
            for k, v in cl.tables()["class_links"].items():
                links.setdefault(k, []).extend(v)
        if links:
            out["class_links"] = links
        splice: dict[str, list] = {}
        for kind, sp in self.splices.items():
            t = sp.tables()["splice"]
            splice.setdefault("kind", []).extend([kind] * len(t["variant"]))
            for k, v in t.items():
                splice.setdefault(k, []).extend(v)
        if splice:
            out["splice"] = splice
        if self.codemap is not None:
            out.update(self.codemap.tables())
        return out

    def images(self) -> dict:
        out = dict(self.examples.pictures)
        if self.codemap is not None:
            out.update(self.codemap.images())
        return out

    def summary(self) -> dict:
        groups = []
        for name, lr in self.examples.layers.items():
            kind = name.rsplit(":", 1)[1]
            groups.append({"layer": name, "source": self.layer, "kind": kind, "units": lr.spec.channels,
                           "spatial": list(lr.spec.spatial), "type": lr.spec.type, "n": lr.n,
                           "relu_like": lr.spec.relu_like, "dead": int(lr.dead().sum()), "rare": int(lr.rare().sum()),
                           "pages": kind in ADDRESSABLE, "shown": self.shown.get(name, [])})
        findings = []
        f = self.factorization
        marker = self.fixed_place()
        if marker:
            findings.append(marker)
        if self.dictionary is not None:
            m = self.dictionary
            findings.append(f"A dictionary of {self.sets_by_kind('sae').k} features on {self.layer} explains "
                            f"{m.explained_variance:.1%} of its variance with {m.l0:.1f} active features per position "
                            f"({m.dead_fraction:.0%} dead).")
        for kind, sp in self.splices.items():
            findings.append(sp.finding().replace("by its reconstruction",
                                                 f"by its reconstruction from the {self.sets_by_kind(kind).title}", 1))
        if self.basis.finding():
            findings.append(self.basis.finding())
        if self.codemap is not None:
            findings.append(self.codemap.summary()["finding"])
        return {
            "layer": self.layer, "k": self.examples.k, "reduce": self.examples.reduce, "classes": self.examples.classes,
            "groups": groups, "headers": {f"{d.layer}:{d.kind}": d.header() for d in self.sets},
            "factorization": f.summary(),
            "dictionary": None if self.dictionary is None else {
                "features": self.sets_by_kind("sae").k, "k": self.sets_by_kind("sae").params.get("k"),
                "explained_variance": self.dictionary.explained_variance, "l0": self.dictionary.l0,
                "dead_fraction": self.dictionary.dead_fraction, "rows": self.dictionary.rows},
            "splice": {kind: sp.summary() for kind, sp in self.splices.items()},
            "basis": self.basis.summary(),
            "links": {kind: {"by": cl.by, "sentences": cl.sentences()} for kind, cl in self.links.items()},
            "codemap": None if self.codemap is None else self.codemap.summary(),
            "vector_input": self.examples.columns is not None, "seconds": self.seconds, "notes": self.notes,
            "findings": findings, "has_pictures": bool(self.examples.pictures),
        }

    def sets_by_kind(self, kind: str) -> DirectionSet | None:
        return next((d for d in self.sets if d.kind == kind), None)

    def fixed_place(self) -> str | None:
        """A factor or feature whose top examples peak at one position (a marker, a watermark), and
        the class it feeds most, preferring the one a class rests on most."""
        found = []
        for name, lr in self.examples.layers.items():
            kind = name.rsplit(":", 1)[1]
            if kind not in ("nmf", "pca", "sae") or not lr.spec.spatial:
                continue
            where, share = lr.peak_consistency()
            links = self.links.get(kind)
            for u in np.flatnonzero((share >= 0.8) & (lr.max > 0)):
                if len(lr.top.ids[u]) < 8:
                    continue
                cls, weight = None, 0.0
                if links is not None:
                    row = links.contributions[:, u]
                    k = int(np.argmax(row))
                    total = links.contributions[k][links.contributions[k] > 0].sum()
                    cls, weight = links.classes[k], float(row[k] / total) if total > 0 and row[k] > 0 else 0.0
                found.append((weight, float(share[u]), lr.spec.address(int(u)), where[u], cls))
        if not found:
            return None
        weight, share, address, where, cls = max(found)
        text = (f"{address} peaks at the same place ({','.join(map(str, where))}) in {share:.0%} of its top examples: "
                "a direction of this layer responds to something at a fixed position")
        if cls is not None and weight > 0:
            text += f", and class {cls!r} rests on it for {weight:.0%} of its positive contribution from these directions"
        return text + "."


def directions_section(subject, data, layer: str, *, nmf_k: int = 6, dictionary: bool = True,
                       dictionary_steps: int = 500, random_n: int | None = None, k: int = 16, reduce: str = "max",
                       limit: int | None = None, fit_limit: int = 2048, codemap_layer: str | None = None,
                       codemap_limit: int = 1000, links_limit: int = 512, splice_limit: int = 512,
                       batch_size: int = 64, seed: int = 0, progress: bool = True) -> DirectionsReport:
    """Everything the report shows about ``layer`` as a space (see the module docstring).

    The factors and the dictionary's features are registered on ``subject`` (``subject.add_directions``),
    so their addresses (``layer:nmf3``, ``layer:sae17``) work in later calls."""
    from .classes import class_links
    from .codemap import code_map
    from .splice import splice_loss

    info = subject.layer(layer)
    if not info.channels or info.channels < 2:
        raise UnsupportedError(f"Layer {info.name!r} has {info.channels} unit(s): there is no space to look at.")
    layer, seconds, notes = info.name, {}, []
    t = time.perf_counter()
    method = "nmf" if subject.is_relu_like(layer) else "pca"
    f = factorize(subject, data, layer, method=method, k=min(nmf_k, info.channels), limit=fit_limit, seed=seed,
                  batch_size=batch_size, progress=progress)
    sets = [from_factorization(f)]
    seconds["factorize"] = time.perf_counter() - t
    metrics = None
    if dictionary:
        t = time.perf_counter()
        d, metrics = learn_dictionary(subject, data, layer, steps=dictionary_steps, limit=fit_limit, seed=seed,
                                      batch_size=batch_size, progress=progress)
        sets.append(from_dictionary(d))
        seconds["dictionary"] = time.perf_counter() - t
    for s in sets:
        subject.add_directions(s)
    sets += [s for s in subject.direction_sets(layer) if s.kind == "dir"]
    rand = random_directions(layer, info.channels, random_n or min(info.channels, 128), seed=seed + 1)
    t = time.perf_counter()
    ex = direction_examples(subject, data, [*sets, rand], neurons=[layer], k=k, reduce=reduce, limit=limit,
                            batch_size=batch_size, pictures=False, progress=progress)
    seconds["examples"] = time.perf_counter() - t
    basis = compare_basis(ex, layer)
    links = {}
    if subject.task == "classification":
        t = time.perf_counter()
        for s in sets:
            try:
                links[s.kind] = class_links(subject, data, s, limit=links_limit, batch_size=batch_size)
            except (NeuronscopeError, RuntimeError) as e:
                notes.append(f"class links of {s.title}: {e}")
        seconds["links"] = time.perf_counter() - t
    shown = _shown(ex, sets, links)
    if ex.columns is None:
        from ..example_pictures import render
        from ..examples import ExamplesResult

        t = time.perf_counter()
        view = ExamplesResult(layers={n: ex.layers[n] for n in shown}, k=ex.k, reduce=ex.reduce, classes=ex.classes)
        ex.pictures = render(view, subject, data, units=shown)
        ex.boxes = view.boxes
        seconds["pictures"] = time.perf_counter() - t
    splices = {}
    t = time.perf_counter()
    for s in sets:
        if s.kind in ("nmf", "pca", "sae"):
            splices[s.kind] = splice_loss(subject, data, layer,
                                          lambda a, s=s: s.reconstruct(a), limit=splice_limit, batch_size=batch_size)
    seconds["splice"] = time.perf_counter() - t
    cmap = None
    if codemap_limit:
        t = time.perf_counter()
        try:
            cmap = code_map(subject, data, codemap_layer or penultimate(subject), limit=codemap_limit, seed=seed, batch_size=batch_size,
                            progress=progress)
        except NeuronscopeError as e:
            notes.append(f"map of the codes: {e}")
        seconds["codemap"] = time.perf_counter() - t
    return DirectionsReport(layer, sets, f, metrics, splices, ex, basis, links, cmap, shown,
                            {k: round(v, 2) for k, v in seconds.items()}, notes)


def _shown(ex, sets, links) -> dict[str, list[int]]:
    """Which directions get pictures and pages: every factor and user direction; for the dictionary,
    the live features with the strongest class links and the purest top examples."""
    shown = {}
    for s in sets:
        name = group_name(s.layer, s.kind)
        lr = ex.layers[name]
        if s.kind != "sae":
            shown[name] = list(range(s.k))
            continue
        alive = np.flatnonzero(lr.max > 0)
        mix = lr.top_label_mix()
        purity = mix.max(1) if mix is not None else np.zeros(s.k)
        strength = np.zeros(s.k)
        if "sae" in links:
            c = links["sae"].contributions
            strength = np.abs(c).max(0) / (np.abs(c).max() or 1.0)
        where, share = lr.peak_consistency()
        interest = purity + strength + share  # pure, class-linked, or always at one place
        order = alive[np.argsort(-interest[alive], kind="stable")]
        shown[name] = sorted(int(u) for u in order[:SHOWN_FEATURES])
    return shown


__all__ = ["DirectionsReport", "directions_section", "default_layer", "load_directions", "penultimate"]


def load_directions(store, subject) -> list[str]:
    """Make the directions a report stored (``layer:nmf3``, ``layer:sae17``, the user's ``dir-``
    vectors) addressable on ``subject`` again; returns their addresses."""
    from .book import from_table

    if not store.has("directions"):
        raise NeuronscopeError(f"{store.root} has no directions section: run `neuronscope report` (or "
                               "`neuronscope directions`) on this model first.")
    sets = from_table(store.table("directions", "vectors"), store.summary("directions")["headers"])
    return [a for s in sets for a in subject.add_directions(s)]
