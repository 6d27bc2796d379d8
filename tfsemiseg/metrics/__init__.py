"""Segmentation metrics as pure numpy functions (no TensorFlow needed).

* :mod:`tfsemiseg.metrics.dice`: pooled Dice (paper Table 1) and per-volume Dice.
* :mod:`tfsemiseg.metrics.surface`: HD95 in millimetres with explicit empty-mask statuses.

Every public name of both modules is re-exported here.
"""

from tfsemiseg.metrics import dice, surface
from tfsemiseg.metrics.dice import *  # noqa: F401,F403  (dice.__all__)
from tfsemiseg.metrics.surface import *  # noqa: F401,F403  (surface.__all__)

__all__ = dice.__all__ + surface.__all__
