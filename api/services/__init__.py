"""Request-level operations; each one owns (and commits) its transaction."""
