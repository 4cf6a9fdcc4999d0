"""agentd: the data-plane server that runs inside each sandbox (the Hopx VM-agent protocol)."""
