"""The image every component runs in: images.conf's REGISTRY/cmunext-components:TAG (what `make images` builds),
or $CMUNEXT_COMPONENT_IMAGE, read when the pipeline is defined. The image holds kfp and the project, so no
task installs anything at run time (install_kfp_package=False on every component)."""
from cmunext.containers.images import component_image

COMPONENT_IMAGE = component_image()
