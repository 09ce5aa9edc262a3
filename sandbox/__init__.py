"""The laptop sandbox: the whole RFC 002 pipeline with local stand-ins (issue 6)."""
