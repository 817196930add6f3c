"""The worker agent: supervisor, unit runner, process control, owner policy and idle sources."""
