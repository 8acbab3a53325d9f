"""One actor-critic method under three schedules: single worker, synchronous A2C, asynchronous A3C."""
