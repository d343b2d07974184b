"""The build: the ordered steps, their manifest and the lock file."""
