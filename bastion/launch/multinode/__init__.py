"""Headless nodes: their engine ranks register with the head over CurveZMQ."""
