"""The example application's agent; its tool uses a package the application declares."""

import humanize
from pydantic_ai import Agent

assistant = Agent("test", instructions="Answer questions about stored files.")


@assistant.tool_plain
def file_size(size_in_bytes: int) -> str:
    """The size of a file, for a person to read."""
    return humanize.naturalsize(size_in_bytes)
