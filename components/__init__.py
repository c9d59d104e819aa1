"""kfp v2 components, one module per pipeline step. Each is a thin shell over `cmunext.steps`."""
from .check import check_changes
from .evaluate import evaluate_model
from .gate import gate_model
from .infra_validate import infra_validate_model
from .package import package_model
from .preprocess import preprocess_data
from .promote import promote_model
from .train import train_model
from .validate import validate_data

__all__ = ["check_changes", "validate_data", "preprocess_data", "train_model", "evaluate_model", "gate_model",
           "package_model", "infra_validate_model", "promote_model"]
