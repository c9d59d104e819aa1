"""CMUNeXt lesion segmentation: model, data, training, evaluation, registry and serving helpers.

Importing the package stays light: no kfp, mlflow, bentoml or great-expectations here.
"""
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]
