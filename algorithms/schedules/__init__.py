"""Schedules: who collects, who learns and when, written once and free of any transport."""
