"""The container image the components run in on a cluster (kfp.local ignores it).

Set CMUNEXT_COMPONENT_IMAGE before compiling to point at your registry's build of
infra/docker/Dockerfile.components.
"""
import os

COMPONENT_IMAGE = os.environ.get("CMUNEXT_COMPONENT_IMAGE", "python:3.11-slim")
