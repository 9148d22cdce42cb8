"""The Synapse Bridge's first example: a Pydantic model in, a string out."""

from pydantic import BaseModel


class InputData(BaseModel):
    name: str
    age: int


def process_data(data: InputData) -> str:
    """Processes the input data and returns a greeting."""
    return f"Hello, {data.name}! You are {data.age} years old."
