"""Shared foundations: errors and findings, YAML input, paths, hashing, the step cache."""
