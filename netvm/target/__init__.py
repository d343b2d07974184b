"""Running what was built: consoles, U-Boot, TFTP, flashing, QEMU boots."""
