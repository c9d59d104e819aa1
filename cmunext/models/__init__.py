from .cmunext import CMUNeXt, check_input_size
from .registry import REFERENCE_GMACS_256, REFERENCE_PARAMS, count_parameters, create_model, list_models

__all__ = [
    "CMUNeXt", "check_input_size", "create_model", "list_models", "count_parameters",
    "REFERENCE_PARAMS", "REFERENCE_GMACS_256",
]
