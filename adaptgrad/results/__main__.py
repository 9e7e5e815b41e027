"""``python -m adaptgrad.results``: the ``adaptgrad-results`` command."""

from adaptgrad.results.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
