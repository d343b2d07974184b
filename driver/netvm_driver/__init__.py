"""Userspace Ethernet driver for the netvm guest (seL4 sDDF net protocol over UIO)."""
