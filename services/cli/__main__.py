"""``python -m services.cli``: the same as the ``synthray`` script."""

from services.cli.main import main

main()
