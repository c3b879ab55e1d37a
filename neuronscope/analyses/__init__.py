"""Analyses: one module per question a user asks of their model (see ARCHITECTURE.md)."""
