"""cbda: Class Balanced Dynamic Acquisition for pixel-wise active learning in semantic
segmentation.

    sel = cbda.select(logits, budget=0.05, rounds=5, strategy="cbda", state=state)

Importing cbda never fails for want of a compiler, a GPU or Triton: native modules load on
first use, and ``python -m cbda.info`` says what is available and why.
"""

from .api import AcquisitionRound, score, select
from .balance import class_weights, imbalance_score
from .errors import BackendUnavailableError, CbdaError, InputError, NativeModuleWarning, StateError, StateFileError
from .scores import HEURISTICS
from .selection import Selection
from .state import ActiveLabelState, PriorPicks

__version__ = "0.1.0"

STRATEGIES = ("image", "ra", "da", "cbra", "cbda")

__all__ = [
    "AcquisitionRound",
    "ActiveLabelState",
    "BackendUnavailableError",
    "CbdaError",
    "HEURISTICS",
    "InputError",
    "NativeModuleWarning",
    "PriorPicks",
    "STRATEGIES",
    "Selection",
    "StateError",
    "StateFileError",
    "class_weights",
    "imbalance_score",
    "score",
    "select",
]
