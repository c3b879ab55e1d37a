"""Attribution: which parts of an input drove an output, and how far to trust the answer.

Captum computes the maps (:mod:`.methods`); neuronscope picks the batch sizes from the model's
measured cost (:mod:`.batching`), checks every map (:mod:`.trust`: completeness, deletion and
insertion curves, the model-randomisation sanity check) and ranks the units driving each class
(:mod:`.drivers`).
"""

from .baselines import BASELINES, blur
from .drivers import ClassDrivers, class_drivers
from .explain import Explanation, MethodResult, explain
from .methods import METHODS
from .trust import DeletionInsertion, RandomisationCheck, deletion_insertion, randomisation_check

__all__ = ["BASELINES", "METHODS", "ClassDrivers", "DeletionInsertion", "Explanation", "MethodResult",
           "RandomisationCheck", "blur", "class_drivers", "deletion_insertion", "explain", "randomisation_check"]
