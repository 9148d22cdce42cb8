"""A module whose attribute is not an agent."""

thing = 42
