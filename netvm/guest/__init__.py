"""The Linux guest: rendering, kernel configuration and build, rootfs, device tree."""
