"""Feature visualization: what input each unit, direction and class wants most.

Composable pieces in the manner of Lucid (Olah et al., "Feature Visualization", Distill 2017):
``param`` (what is optimized), ``objectives`` (what is maximized), ``transforms`` (robustness),
``redirect`` (gradients for switched-off ReLUs), ``render`` (the batched loop), ``evidence``
(the numbers beside each picture), ``accentuate`` (starting from a real input), ``patch`` (what a class wants inside one window), ``vector``
(inputs that are plain numeric vectors) and ``visualize`` (the one-call API).
"""

from . import objectives, transforms
from .accentuate import Accentuation, accentuate
from .objectives import Objective
from .param import colour_matrix, magnitude_spectrum
from .patch import ClassPatch, class_patch
from .render import Rendering, render
from .vector import Region, VectorResult, maximize
from .visualize import VectorVisualization, Visualization, interpolate, visualize

__all__ = ["Accentuation", "ClassPatch", "Objective", "Region", "Rendering", "VectorResult", "VectorVisualization", "Visualization",
           "accentuate", "class_patch", "colour_matrix", "interpolate", "magnitude_spectrum", "maximize", "objectives", "render", "transforms",
           "visualize"]
