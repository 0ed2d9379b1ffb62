"""Security policy the agent enforces: peer authentication (mTLS mode), later authorization."""
