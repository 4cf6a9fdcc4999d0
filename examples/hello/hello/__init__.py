"""hello: the agentplex example project (see ../README.md)."""
