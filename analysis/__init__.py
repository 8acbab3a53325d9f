"""Turns run directories into tidy frames, statistics, figures and tables."""
