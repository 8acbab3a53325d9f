"""Transports: they only move data and place work (local processes, Ray actors, a simulated clock)."""
