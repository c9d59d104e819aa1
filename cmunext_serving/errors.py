"""The project's user-facing error: the CLI prints its message (no traceback) and exits 2."""


class CmunextError(Exception):
    pass
