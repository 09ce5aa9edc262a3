"""RSOLV staging environment automation: the pure model, exceptions, emulator and CLI."""
