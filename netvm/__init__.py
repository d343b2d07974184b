"""netvm: generate the Linux guest of an seL4 Ethernet driver VM.

The package is plain functions over one typed board model (`netvm.board`); `tasks.py`
is a thin invoke layer over it. No module keeps state at import time.
"""

__version__ = "0.1.0"
