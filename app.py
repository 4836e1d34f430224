"""Recon Studio: onboard a product for visual defect detection from the browser.

`bash run.sh app` (or `streamlit run app.py`). Pages live in pages/ and are thin: they read state from the
workspace ($RECON_WORKSPACE or ./workspace), call recon_core, and draw.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so pages can import pages._ui and recon_core

st.set_page_config(page_title="Recon Studio", page_icon="🔎", layout="wide")

PAGES = [
    st.Page("pages/1_project.py", title="Project & data", icon="📁", default=True, url_path="project"),
    st.Page("pages/2_designer.py", title="Defect designer", icon="🎨", url_path="designer"),
    st.Page("pages/3_train.py", title="Train", icon="🏋️", url_path="train"),
    st.Page("pages/4_evaluate.py", title="Evaluate", icon="📈", url_path="evaluate"),
    st.Page("pages/5_threshold.py", title="Threshold", icon="🎚️", url_path="threshold"),
    st.Page("pages/6_inspect.py", title="Inspect & export", icon="🔍", url_path="inspect"),
]

nav = st.navigation(PAGES)
st.sidebar.markdown("**Recon Studio** — defect detection from a few good images")
nav.run()
