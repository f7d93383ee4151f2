"""MergeScope engine: checkpoints, merges, captures, analyses and evaluation.

Plain functions over tensors and files; nothing here imports Streamlit.
"""
