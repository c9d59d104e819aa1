"""The project's user-facing error (the CLI prints its message, no traceback, and exits 2). It is defined in the
torch-free serving package, which the bento ships on its own, so that the library and the service raise one type."""
from cmunext_serving.errors import CmunextError

__all__ = ["CmunextError"]
