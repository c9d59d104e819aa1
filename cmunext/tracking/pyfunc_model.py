"""MLflow pyfunc over a safetensors weights file (models from code: no pickled objects).

Input: float32 N x C x S x S, normalised as cmunext.data.transforms does. Output: lesion
probabilities N x 1 x S x S.
"""
import mlflow
import numpy as np


class CMUNeXtPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from cmunext.engine.weights import load_weights
        self.model, self.meta = load_weights(context.artifacts["weights"])

    def predict(self, context, model_input, params=None):
        import torch
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        with torch.inference_mode():
            return torch.sigmoid(self.model(x)).numpy()


mlflow.models.set_model(CMUNeXtPyfunc())
