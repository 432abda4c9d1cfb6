"""Reproducible measurements of speed and memory; never asserted by tests."""
