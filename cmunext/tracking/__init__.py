"""MLflow tracking and the model registry (imports mlflow: never import this from `cmunext/__init__`)."""
