"""The main job: run every analysis that fits a model and its data into a store, then the report.

Each section is keyed by a hash of the model's weights, the data and the options, so an
interrupted or repeated run reuses what is already finished and recomputes only what changed.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import __version__
from .analyses.activations import activation_maps
from .analyses.examples import examples_reducer, finish_examples, reduce_activation
from .analyses.filters import analyze_filters
from .analyses.overview import overview
from .analyses.sanity import SanityReducer
from .analyses.stream import clear_checkpoint, run_pass
from .engines import get_engine
from .errors import NeuronscopeError, UnsupportedError
from .store import Store, content_hash, model_hash


@dataclass
class ReportOptions:
    """What the report analyses; every default can be overridden (CLI flags mirror these)."""

    layers: Sequence[str] | None = None  # default: Subject.default_layers()
    limit: int | None = None  # examples for the data pass (None: all)
    example: str | None = None  # id of the input whose activation maps are shown
    k: int = 16  # dataset examples kept per unit, at the top and at the bottom
    reduce: str = "max"  # how a conv unit's map becomes one score per example: "max" or "mean"
    max_units: int | None = 64  # units per layer that get example pictures (None: all)
    batch_size: int = 64
    progress: bool = True
    title: str | None = None
    story: str | None = None  # a paragraph shown at the top of the overview (the demo uses it)
    extra: dict = field(default_factory=dict)  # facts shown on the overview (the demo's metrics)
    sections: Sequence[str] | None = None  # run only these (None: every section that fits)
    featvis_units: int | None = 8  # units per layer that get feature visualizations (None: all, 0: none)
    featvis_steps: int = 256
    featvis_seeds: int = 2  # random starts per unit (their agreement is measured)
    featvis_diverse: int = 3  # images in each unit's diverse set (0: none)
    attribution_inputs: int = 12  # inputs explained in the gallery, spread over classes (0: no attribution section)
    attribution_units: int = 4  # units per layer explained on their top examples
    tabular: bool = True  # networks on vectors: the logistic reading, column importance, PD/ICE, surrogate
    groups: dict | None = None  # columns permuted together for importance, e.g. {"embarked": ["emb_C", "emb_Q"]}
    directions: bool = True  # the layer as a space: factors, a sparse dictionary, random directions, the code map
    directions_layer: str | None = None  # default: the last spatial ReLU layer among the report's layers
    factors: int = 6  # NMF factors (principal components when the layer can go negative)
    dictionary_steps: int = 500  # training steps of the sparse dictionary (0: no dictionary)
    directions_featvis: int = 8  # dictionary features drawn (every factor is drawn)
    shortcuts: bool = True  # image classifiers: look for a shortcut behind each class and test it causally
    engine: object = None  # where the data pass, feature visualization and attribution run: None (here), "ray", or an engine

    def wants(self, section: str) -> bool:
        return self.sections is None or section in self.sections


def _say(msg: str, progress: bool) -> None:
    if progress:
        print(msg, file=sys.stderr, flush=True)


#: The modules whose code computes each section: editing them invalidates stored results.
SECTION_CODE = {
    "overview": ("analyses/overview.py", "subject.py"),
    "filters": ("analyses/filters.py",),
    "sanity": ("analyses/sanity.py", "analyses/stream.py", "subject.py"),
    "examples": ("analyses/examples.py", "analyses/reducers.py", "analyses/sketch.py", "analyses/activations.py",
                 "analyses/example_pictures.py", "analyses/receptive_field.py", "analyses/stream.py", "subject.py"),
    "activations": ("analyses/activations.py", "imaging.py", "subject.py"),
    "featvis": tuple(f"analyses/featvis/{m}.py" for m in ("param", "objectives", "transforms", "redirect", "tap",
                                                         "render", "evidence", "visualize", "vector"))
    + ("analyses/stream.py", "subject.py"),
    "attribution": tuple(f"analyses/attribution/{m}.py" for m in ("targets", "baselines", "methods", "sampling",
                                                                   "batching", "trust", "explain", "drivers", "section"))
    + ("subject.py",),
    "tabular": tuple(f"analyses/tabular/{m}.py" for m in ("logistic", "importance", "surrogate", "hidden", "section"))
    + ("subject.py",),
    "shortcuts": ("analyses/shortcuts.py", "analyses/stream.py", "subject.py")
    + tuple(f"analyses/attribution/{m}.py" for m in ("targets", "baselines", "methods", "sampling", "batching",
                                                      "explain"))
    + tuple(f"analyses/featvis/{m}.py" for m in ("param", "objectives", "transforms", "redirect", "tap", "render",
                                                  "patch")),
    "directions": tuple(f"analyses/directions/{m}.py" for m in ("rows", "factorize", "sae", "book", "examples", "basis",
                                                                 "classes", "splice", "codemap", "section"))
    + ("analyses/examples.py", "analyses/example_pictures.py", "analyses/stream.py", "subject.py"),
}


def _code_digest(section: str) -> str:
    root = Path(__file__).parent
    return hashlib.sha256(b"".join((root / f).read_bytes() for f in SECTION_CODE.get(section, ()))).hexdigest()


def analyze(subject, data, out: str | Path, options: ReportOptions | None = None) -> Store:
    """Run the analyses that fit ``subject`` and ``data`` into the store at ``out``."""
    opts = options or ReportOptions()
    store = Store(out)
    t0 = time.perf_counter()
    # Not data.summary(): its count of unreadable files grows as they are met.
    data_key = None if data is None else content_hash(
        data.source, data.kind, data.input_shape, data.classes, data.columns, data.target, data.ids())
    base_key = content_hash(__version__, model_hash(subject.model), subject.describe(), data_key)
    store.set_info(title=opts.title or subject.name, story=opts.story, extra=opts.extra,
                   model=subject.describe(), data=data.summary() if data is not None else None)

    def key(section: str, **params) -> str:
        return content_hash(base_key, section, params, _code_digest(section))

    before = {name: entry.get("key") for name, entry in store.sections().items()}
    started = [time.perf_counter()]
    engine = get_engine(opts.engine)

    def save(section: str, result, k: str) -> None:
        """Store a section with the time since the previous one was stored (the checks between are instant)."""
        store.save(section, result, key=k, seconds=time.perf_counter() - started[0])
        started[0] = time.perf_counter()

    def finish() -> Store:
        # The time of the run that computed something: a rerun that reuses every section keeps it.
        if {name: entry.get("key") for name, entry in store.sections().items()} != before:
            store.set_info(seconds=round(time.perf_counter() - t0, 2))
        return store

    k = key("overview")
    if not store.has("overview", k):
        save("overview", overview(subject), k)

    k = key("filters")
    if opts.wants("filters") and not store.has("filters", k):
        try:
            save("filters", analyze_filters(subject), k)
        except UnsupportedError as e:
            _say(f"filters: skipped ({e})", opts.progress)

    if data is None:
        return finish()

    if opts.layers and not subject.hookable:
        subject._require_hooks("the layers " + ", ".join(opts.layers))
    layers = list(opts.layers or subject.default_layers()) if subject.hookable else []
    k_sanity = key("sanity", limit=opts.limit)
    k_examples = key("examples", layers=layers, limit=opts.limit, k=opts.k, reduce=opts.reduce,
                     max_units=opts.max_units)
    reducers = {}
    if opts.wants("sanity") and not store.has("sanity", k_sanity):
        reducers["sanity"] = SanityReducer(subject)
    if layers and opts.wants("examples") and not (store.has("examples", k_examples) and store.has("layer_stats", k_examples)):
        reducers["examples"] = examples_reducer(subject, data, layers, k=opts.k, reduce=opts.reduce)
    if reducers:
        # One forward pass over the data feeds every reducer; it resumes if interrupted.
        checkpoint = store.root / ".pass-checkpoint.npz"
        run_pass(subject, data, layers if "examples" in reducers else [], reducers, reduce=reduce_activation, limit=opts.limit,
                 batch_size=opts.batch_size, checkpoint=checkpoint,
                 key=content_hash(k_sanity, k_examples, sorted(reducers)), progress=opts.progress,
                 engine=engine)
        # The shared pass's time goes to the examples (stored first when both ran): it is their cost.
        if "examples" in reducers:
            _say("drawing dataset examples...", opts.progress)
            ex = finish_examples(reducers["examples"], subject, data, max_units=opts.max_units)
            save("examples", ex, k_examples)
            store.save("layer_stats", ex.layer_stats(), key=k_examples)
        if "sanity" in reducers:
            result = reducers["sanity"].result(data)
            save("sanity", result, k_sanity)
            if result.warning:
                _say("WARNING: " + result.warning, True)
        clear_checkpoint(checkpoint)
    if data.skipped:
        _say(f"{len(data.skipped)} unreadable example(s) skipped; the report lists them.", opts.progress)
        store.set_info(data=data.summary())

    if layers and opts.wants("activations"):
        example = opts.example or next(iter(data.ids()), None)
        k = key("activations", layers=layers, example=example)
        if example is not None and not store.has("activations", k):
            try:
                x = data.get([example]).x
            except NeuronscopeError:
                if opts.example:
                    raise
                first = next(data.batches(1))  # the first example was unreadable: take the next one
                x, example = first.x, first.ids[0]
            save("activations", activation_maps(subject, x[0], layers, example_id=example), k)

    if opts.wants("directions") and opts.directions and layers:
        from .analyses.directions.section import default_layer, directions_section, load_directions

        layer = opts.directions_layer or default_layer(subject, layers)
        k = key("directions", layer=layer, limit=opts.limit, k=opts.k, reduce=opts.reduce, factors=opts.factors,
                steps=opts.dictionary_steps, user=[d.table()["read"] for d in subject.direction_sets() if d.kind == "dir"])
        if layer is not None and not store.has("directions", k):
            _say(f"directions: factors, a dictionary and random directions of {layer}; the map of the codes...",
                 opts.progress)
            save("directions", directions_section(
                subject, data, layer, nmf_k=opts.factors, dictionary=opts.dictionary_steps > 0, dictionary_steps=max(opts.dictionary_steps, 1),
                k=opts.k, reduce=opts.reduce, limit=opts.limit, batch_size=opts.batch_size, progress=opts.progress), k)
        elif layer is not None:
            load_directions(store, subject)

    if opts.wants("featvis") and opts.featvis_units != 0 and len(subject.input_shape) in (1, 3) and subject.hookable:
        k = key("featvis", layers=layers, units=opts.featvis_units, steps=opts.featvis_steps, seeds=opts.featvis_seeds,
                diverse=opts.featvis_diverse, examples=store.sections().get("examples", {}).get("key"),
                directions=store.sections().get("directions", {}).get("key"), directions_featvis=opts.directions_featvis)
        if not store.has("featvis", k):
            save("featvis", _feature_visualizations(subject, data, store, layers, opts, engine=engine), k)

    if opts.wants("attribution") and opts.attribution_inputs:
        k = key("attribution", layers=layers, inputs=opts.attribution_inputs, units=opts.attribution_units,
                examples=store.sections().get("examples", {}).get("key"))
        if not store.has("attribution", k):
            from .analyses.attribution.section import attribution_section

            _say(f"attribution: {opts.attribution_inputs} inputs, every method's trust checks...", opts.progress)
            save("attribution", attribution_section(
                subject, data, store, layers, inputs=opts.attribution_inputs, units_per_layer=opts.attribution_units,
                progress=opts.progress, ranked=_units_by_interest(store), engine=engine), k)
    if opts.wants("shortcuts") and opts.shortcuts and subject.task == "classification" and len(subject.input_shape) == 3:
        k = key("shortcuts", limit=opts.limit)
        if not store.has("shortcuts", k):
            from .analyses.shortcuts import find_shortcuts

            _say("shortcuts: where each class's evidence sits, pasted onto other images...", opts.progress)
            save("shortcuts", find_shortcuts(subject, data, progress=opts.progress), k)
    if opts.wants("tabular") and opts.tabular and len(subject.input_shape) == 1:
        k = key("tabular", limit=opts.limit, groups=opts.groups)
        if not store.has("tabular", k):
            from .analyses.tabular.section import tabular

            _say("columns: logistic reading, importance, partial dependence...", opts.progress)
            save("tabular", tabular(subject, data, groups=opts.groups, limit=opts.limit or 2000,
                                    progress=opts.progress), k)
    return finish()


def _feature_visualizations(subject, data, store, layers, opts, engine=None):
    """Feature visualizations of each layer's most telling units and of every class, as one section.

    Units come in order of interest from the dataset-examples pass when it ran: units that always
    peak at one fixed place first (also drawn as the neuron at that place), then the most
    class-selective, then the rest by index. Each batch of targets is one ``visualize`` call; with
    an ``engine`` the calls run as tasks on its workers (the same calls, so the same pictures).
    """
    import dataclasses

    from .analyses.featvis.visualize import choose_colour, visualize

    final = subject.final_layer()
    common = dict(data=data, store=store, seeds=opts.featvis_seeds, steps=opts.featvis_steps, progress=opts.progress)
    if len(subject.input_shape) == 3:
        # One colour matrix from the data for every call, rather than a fresh sample per layer.
        common.update(diverse=opts.featvis_diverse, colour=choose_colour(subject, data))
    calls: list[tuple[str, tuple, dict]] = []  # (what, args, kwargs) of visualize(subject, *args, **kwargs)
    ranked = _units_by_interest(store)
    for layer in layers:
        if layer == final:
            continue
        c = subject.layer(layer).channels or 1
        n = c if opts.featvis_units is None else min(c, opts.featvis_units)
        order = ranked.get(layer, {})
        units = sorted(range(c), key=lambda u: order.get(u, (2, 0, u)))[:n]
        calls.append((f"{n} units of {layer}", (layer,), dict(units=units, **common)))
        fixed = [f"{layer}:{u}@{order[u][3]}" for u in units
                 if order.get(u, (2,))[0] == 0 and len(subject.input_shape) == 3]
        if fixed:  # one batch, each neuron at its own place
            calls.append((f"{len(fixed)} fixed-place neurons of {layer}", (fixed,),
                          {**common, "diverse": 0, "negative": False}))
    if store.has("directions") and len(subject.input_shape) == 3:
        units = store.table("directions", "units")
        for group in store.summary("directions")["groups"]:
            if not group["pages"]:
                continue
            shown = set(group["shown"] if group["kind"] != "sae" else group["shown"][:opts.directions_featvis])
            addresses = [a for g, i, a in zip(units["layer"], units["index"], units["unit"])
                         if g == group["layer"] and i in shown]
            if addresses:
                calls.append((f"{len(addresses)} directions of {group['source']} ({group['kind']})", (addresses,),
                              {**common, "diverse": 0, "negative": False}))
    if subject.task == "classification":
        calls.append(("classes", ([f"class:{c}" for c in subject.classes],), common))
    if engine is not None:
        _say(f"feature visualization: {len(calls)} batches of targets as Ray tasks...", opts.progress)
        done = engine.map_calls(subject, data, visualize, [(a, {**k, "progress": False}) for _, a, k in calls],
                                desc="feature visualization", progress=opts.progress)
    else:
        done = []
        for what, args, kwargs in calls:
            _say(f"feature visualization: {what}...", opts.progress)
            done.append(visualize(subject, *args, **kwargs))
    v = done[-1]
    # per-call facts stay in the targets table (each row has its negative_layer)
    options = {k: val for k, val in v.options.items() if k != "negative_layer"}
    if "colour" in common:  # the matrix was estimated here, from the data
        options = {**options, "colour": "data" if common["colour"] is not None else "none"}
    return dataclasses.replace(v, results=[r for d in done for r in d.results], seconds=sum(d.seconds for d in done),
                               options=options)


def _units_by_interest(store) -> dict[str, dict[int, tuple]]:
    """Per layer, a sort key per unit: fixed-place units, then class-selective ones, then the rest."""
    if not store.has("examples"):
        return {}
    t = store.table("examples", "units")
    out: dict[str, dict[int, tuple]] = {}
    for layer, u, share, peak, sel in zip(t["layer"], t["index"], t["peak_share"], t["peak_at"], t["selectivity"]):
        if share is not None and share >= 0.8 and peak:
            key = (0, -share, u, peak)
        elif sel is not None and sel >= 0.5:
            key = (1, -sel, u)
        else:
            key = (2, 0, u)
        out.setdefault(layer, {})[int(u)] = key
    return out


def report(subject, data, out: str | Path, options: ReportOptions | None = None) -> Path:
    """Analyse, then write the static site into ``out``; returns the path of its index page."""
    from .website import render_site

    store = analyze(subject, data, out, options)
    return render_site(store.root)
