"""Agents and modules the Elixir and Python test suites load into workers."""
