"""The run engine: the durable queue (claim, lease, sweep); workers, the scheduler and the
executor build on it."""
