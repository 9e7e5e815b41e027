"""``python -m adaptgrad`` runs the Hydra app, like the ``adaptgrad`` command."""

from adaptgrad.app import main

main()
