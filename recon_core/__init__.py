"""Recon Studio engine: data, synthetic defects, models, training, metrics, jobs. No Streamlit here."""

__version__ = "0.1.0"
