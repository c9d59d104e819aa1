"""Serving: export to ONNX (export), BentoML packaging (package), the service (service) and launching it (serve).

Nothing is imported here: `service` and `runtime` must stay importable without torch, `export` needs torch.
"""
