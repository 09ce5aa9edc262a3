"""RSOLV staging environment automation: the pure model, exceptions and the CLI.

The Kubernetes API emulator is not part of it: it is the top-level test double
``kube_emulator``, which the product never imports (an import-linter contract).
"""
