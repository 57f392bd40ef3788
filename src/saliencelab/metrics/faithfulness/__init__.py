"""Faithfulness metrics, registered by name on import.

deletion, insertion (Petsiuk et al. 2018); aopc_morf, aopc_lerf (Samek et al. 2017); road,
road_morf, road_lerf (Rong et al. 2022); faithfulness_correlation (Bhatt et al. 2020);
infidelity (Yeh et al. 2019); sensitivity_n (Ancona et al. 2018); monotonicity (Arya et al.
2019); monotonicity_correlation (Nguyen & Martinez 2020).
"""

from . import (  # noqa: F401
    correlation,
    deletion,
    infidelity,
    monotonicity,
    region_perturbation,
    road,
    sensitivity_n,
)
from .road import linear_imputation

__all__ = ["linear_imputation"]
