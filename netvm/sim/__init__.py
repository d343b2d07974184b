"""Host simulation of the driver VM's data path (a SIMULATION of the seL4 VMM side).

Runs the real guest driver on a Linux host against simulated UIO devices, a simulated
virt_rx/virt_tx with echo clients, and a veth pair in network namespaces, so the data
path can be tested without the seL4 VMM, the Microkit SDK or the board. See docs/sim.md.

Modules: layout (numbers from the board), vmm (shared memory, IRQ sockets, doorbell FIFOs,
data-passing page), rings (VMM-side queue access), virt (virt_rx/virt_tx, clients,
conservation, hostile input), frames (echo replies), netns (namespaces), runs (each
run's own names on a shared host, a dead run's leftovers removed), runner (life cycle,
`run_sim`), peer (traffic tools run inside the peer namespace).
"""

from __future__ import annotations

from netvm.sim.runner import SimOptions, SimResult, Simulation, run_sim

__all__ = ["SimOptions", "SimResult", "Simulation", "run_sim"]
