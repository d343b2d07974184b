"""The seL4 side: Microkit/libvmm/sDDF inputs, the image handoff, system checks."""
