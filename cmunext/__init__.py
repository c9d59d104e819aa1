"""CMUNeXt lesion segmentation: model, data, training, evaluation, registry and serving helpers.

Importing the package stays light: no torch, kfp, mlflow, bentoml or great-expectations here (every pipeline
step imports `cmunext.config`; only train and evaluate need torch).
"""
import atexit as _atexit
import gc as _gc

# No last garbage collection over every object of every loaded module at exit: with mlflow loaded that costs
# each pipeline step (and the driver) about 1 s after its work is done.
_atexit.register(_gc.freeze)

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "__version__"]


def __getattr__(name: str):
    if name in ("create_model", "list_models"):
        from . import models
        return getattr(models, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
