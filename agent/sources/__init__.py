"""Control-plane sources: where the agent's objects come from (a directory, later the API)."""
