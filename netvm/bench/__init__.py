"""`invoke bench`: throughput, CPU per frame, line-rate and latency of the driver.

Runs the real driver (and a C baseline written the way upstream's C driver works) on
the host simulation, with a C traffic generator in the peer namespace. See docs/bench.md.
"""
