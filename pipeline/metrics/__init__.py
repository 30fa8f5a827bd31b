"""Metrics: each a function of arrays, tested against an independent definition."""
