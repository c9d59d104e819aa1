"""Container images of the project and the engine that builds and runs them (podman, or docker).

engine.py  finding the engine and talking to it (and its Docker-compatible API for kfp.local)
images.py  the images' names, from the one place (infra/k8s/components/images/images.conf)
build.py   `make images` / `cmunext images build`: the base, component and MLflow images
serving.py `cmunext containerize` and `cmunext serve --container`: a model version's serving image
"""
