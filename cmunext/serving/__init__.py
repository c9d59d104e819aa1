"""Serving: ONNX export (export), BentoML packaging (package), the service (service, with runtime, guard
and ui), launching it (serve) and its benchmark (bench).

Nothing is imported here: service, runtime, guard and ui must stay importable without torch (they are
copied into every bento); export, package and bench need the full environment.
"""
