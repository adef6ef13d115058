"""Evaluation: metrics with intervals, and the figures and HTML report."""
