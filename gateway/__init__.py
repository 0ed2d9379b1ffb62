"""Slipstream's edge API gateway."""
