"""Recon Studio engine: data, synthetic defects, models, training, metrics, jobs. No Streamlit here."""

import os

# Idle OpenMP worker threads sleep instead of spin-waiting. On a small shared CPU (2 cores, other processes
# busy) torch's default spinning made a 2-thread DRAEM training step 3-6x SLOWER than this (notes/draem.md).
# Only effective when set before torch is first imported; an explicit value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
