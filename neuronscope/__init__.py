"""neuronscope: a microscope for your own PyTorch model.

What did the network learn, which features does it care about, and why::

    import neuronscope as ns
    subject = ns.Subject(model, input_shape=(3, 32, 32), mean=0.5, std=0.5, classes=names)
    data = ns.open_data("images/", input_shape=subject.input_shape)
    ns.filters(subject)                 # what the first layer looks for
    ns.activation_maps(subject, x)      # what every layer does with one input
    ns.report(subject, data, "out/")    # everything, as a static site
"""

__version__ = "0.1.0"

from .errors import NeuronscopeError  # noqa: E402
from .subject import Subject  # noqa: E402
from .units import Unit, parse_unit  # noqa: E402

__all__ = ["NeuronscopeError", "Subject", "Unit", "parse_unit", "__version__"]
