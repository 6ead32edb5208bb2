"""Analysis of trained representations.

``distance``: how far apart the source- and target-modality feature distributions
are in the shared embedding space (the quantity that bounds the target's test error).
"""

from cmcd_jax.analysis.distance import (MIN_SAMPLES, c2st, clopper_pearson, mmd_rbf,
                                        modality_distance)

__all__ = ["MIN_SAMPLES", "c2st", "clopper_pearson", "mmd_rbf", "modality_distance"]
