"""The built-in agent: its turn loop, model providers and tools."""
