"""Algorithms that improve a simulated model: PTQ, QAT, compression, analysis."""
