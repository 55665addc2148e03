"""Public entry points: score(), select(), the streaming AcquisitionRound, backend dispatch."""

from .score import score
from .select import AcquisitionRound, select

__all__ = ["score", "select", "AcquisitionRound"]
