"""neuronscope: a microscope for your own PyTorch model.

What did the network learn, which features does it care about, and why::

    import neuronscope as ns
    subject = ns.Subject(model, input_shape=(3, 32, 32), mean=0.5, std=0.5, classes=names)
    data = ns.open_data("images/", input_shape=subject.input_shape)
    ns.filters(subject)                 # what the first layer looks for
    ns.activation_maps(subject, x)      # what every layer does with one input
    ns.visualize(subject, "conv3:5", data=data)   # what input a unit wants most, with evidence
    ns.explain(subject, x, target="cat")         # which parts of x made it a cat, and can we trust that
    ns.tabular(subject, table)                   # networks on vectors: the logistic reading, column importance
    ns.directions(subject, data, "conv3")        # the layer as a space: factors, a sparse dictionary, random directions
    ns.report(subject, data, "out/")    # everything, as a static site
"""

__version__ = "0.1.0"

from .analyses.activations import activation_maps, layer_stats  # noqa: E402
from .analyses import attribution, featvis  # noqa: E402
from .analyses.attribution import class_drivers, explain  # noqa: E402
from .analyses.tabular.importance import column_importance  # noqa: E402
from .analyses.tabular.logistic import logistic_reading  # noqa: E402
from .analyses.tabular.section import tabular  # noqa: E402
from .analyses.directions.factorize import factorize  # noqa: E402
from .analyses.directions.sae import learn_dictionary  # noqa: E402
from .analyses.directions.section import directions_section as directions, load_directions  # noqa: E402
from .analyses.examples import examples  # noqa: E402
from .analyses.featvis import accentuate, visualize  # noqa: E402
from .analyses.filters import analyze_filters as filters  # noqa: E402
from .analyses.overview import overview  # noqa: E402
from .analyses.sanity import sanity  # noqa: E402
from .data import open_data  # noqa: E402
from .errors import NeuronscopeError  # noqa: E402
from .loading import load_model  # noqa: E402
from .pipeline import ReportOptions, analyze, report  # noqa: E402
from .store import Store  # noqa: E402
from .subject import Subject  # noqa: E402
from .units import Unit, parse_unit  # noqa: E402

__all__ = [
    "NeuronscopeError", "ReportOptions", "Store", "Subject", "Unit", "accentuate", "activation_maps", "analyze",
    "attribution", "class_drivers", "column_importance", "directions", "factorize", "learn_dictionary", "load_directions", "examples", "explain", "logistic_reading", "tabular", "featvis", "filters", "layer_stats", "load_model", "open_data", "overview", "parse_unit", "report", "sanity", "visualize",
    "__version__",
]
