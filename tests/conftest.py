"""Shared test settings; `pytester` runs inner sessions (the lab cleanup-on-failure test)."""

pytest_plugins = ["pytester"]
