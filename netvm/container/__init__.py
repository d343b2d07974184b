"""The build container: netvm's build environment as an OCI image made from Debian's
archive and PyPI alone (`invoke container.build`), and commands run inside it with the
checkout and the caches mounted (`invoke container.run`). See docs/ci.md."""
