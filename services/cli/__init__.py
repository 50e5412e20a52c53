"""The one console entry point, ``synthray``: every command group (``main.main`` is the root)."""
