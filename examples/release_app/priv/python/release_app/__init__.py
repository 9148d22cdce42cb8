"""The Python side of the release example: its agents."""
