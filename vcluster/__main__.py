"""``python -m vcluster``: the same as the ``vcluster`` command."""

from vcluster.cli import main

main()
