"""The local transport: worker processes on this machine, pipes and shared memory."""
