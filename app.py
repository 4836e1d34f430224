"""Recon Studio: onboard a product for visual defect detection from the browser.

`bash run.sh app` (or `streamlit run app.py`). Pages live in app_pages/ and are thin: they read state from the
workspace ($RECON_WORKSPACE or ./workspace), call recon_core, and draw.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

sys.path.insert(0, str(Path(__file__).resolve().parent))  # so pages can import app_pages._ui and recon_core

st.set_page_config(page_title="Recon Studio", page_icon=":material/search:", layout="wide")

PAGES = [
    # the default page is served at "/" (Streamlit gives the default page no path of its own)
    st.Page("app_pages/1_project.py", title="Project & data", icon=":material/folder:", default=True),
    st.Page("app_pages/2_designer.py", title="Defect designer", icon=":material/palette:", url_path="designer"),
    st.Page("app_pages/3_train.py", title="Train", icon=":material/model_training:", url_path="train"),
    st.Page("app_pages/4_evaluate.py", title="Evaluate", icon=":material/monitoring:", url_path="evaluate"),
    st.Page("app_pages/5_threshold.py", title="Threshold", icon=":material/tune:", url_path="threshold"),
    st.Page("app_pages/6_inspect.py", title="Inspect & export", icon=":material/search:", url_path="inspect"),
]

nav = st.navigation(PAGES)
st.sidebar.markdown("**Recon Studio** — defect detection from a few good images")
nav.run()
