"""Plumbing that knows no reinforcement learning: messages, checkpoint files, worker supervision, shared memory,
processes. The lowest layer: it imports no other."""
