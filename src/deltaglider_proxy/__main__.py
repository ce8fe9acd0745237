"""``python -m deltaglider_proxy`` runs the same CLI as the ``deltaglider-proxy`` script."""

from deltaglider_proxy.cli import main

main()
