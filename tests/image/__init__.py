"""The container image, run as deploy/base/ runs it (make image-test)."""
