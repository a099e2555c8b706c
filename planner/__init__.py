"""The planner's back end: layouts, runs and figures behind app.py (its Streamlit face)."""
