"""Fidelity metrics and evaluation."""
