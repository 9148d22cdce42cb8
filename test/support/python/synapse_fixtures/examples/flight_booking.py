"""flight_booking: delegation to a sub-agent, an output validator with retries, union outputs.

`search_agent` finds the cheapest flight matching its deps (plain fields,
validated from the caller's data, the date from an ISO string). Its tool
`extract_flights` delegates to `extraction_agent`, passing `usage=ctx.usage`
so the sub-agent's requests count in the search's usage. Its output is
`FlightDetails | NoFlightFound`; an output validator rejects a flight that
does not match the request, and the model tries again.

The scripted search model first proposes the cheapest flight of the text
whatever its date (the validator makes it retry), then the cheapest one that
matches; asked again ("anything cheaper") it answers NoFlightFound.

`seat_preference_agent` reads a seat from a sentence: `SeatPreference | Failed`.
"""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_ai import Agent, ModelRetry, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo

from synapse_fixtures.examples import _script
from synapse_fixtures.recording import recorded_model

# The page the search reads (the caller sends it as `web_page_text`).
WEB_PAGE_TEXT = (Path(__file__).parent / "flights.txt").read_text(encoding="utf-8")


class FlightDetails(BaseModel):
    """Details of the most suitable flight."""

    flight_number: str
    price: int
    origin: str = Field(description="Three-letter airport code")
    destination: str = Field(description="Three-letter airport code")
    date: datetime.date


class NoFlightFound(BaseModel):
    """When no valid flight is found."""


@dataclass
class Deps:
    web_page_text: str
    req_origin: str
    req_destination: str
    req_date: datetime.date


def _flights(text: str) -> list[dict[str, object]]:
    found = []
    for block in text.split("\n\n"):
        number = re.search(r"Flight (\S+)", block)
        price = re.search(r"Price: \$(\d+)", block)
        codes = re.findall(r"\(([A-Z]{3})\)", block)
        date = re.search(r"Date: (\w+ \d+, \d{4})", block)
        if number and price and len(codes) == 2 and date:
            day = datetime.datetime.strptime(date[1], "%B %d, %Y").date()
            found.append(
                {
                    "flight_number": number[1],
                    "price": int(price[1]),
                    "origin": codes[0],
                    "destination": codes[1],
                    "date": day.isoformat(),
                }
            )
    return found


def _extraction_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    output_tool = info.output_tools[0].name
    flights = _flights(_script.prompt(messages))
    return _script.calls(_script.call(output_tool, {"response": flights}, "extract_0"))


extraction_agent = Agent(
    recorded_model(_extraction_model, name="flight_extraction"),
    output_type=list[FlightDetails],
    system_prompt="Extract all the flight details from the given text.",
)


def _search_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = _script.turns(messages)
    tools = {tool.name for tool in info.output_tools}
    found_tool = next(name for name in tools if "FlightDetails" in name)
    none_tool = next(name for name in tools if "NoFlightFound" in name)
    if "cheaper" in _script.prompt(messages):
        return _script.calls(_script.call(none_tool, {}, f"none_{turn}"))
    extracted = _script.returns(messages, "extract_flights")
    if not extracted:
        return _script.calls(_script.call("extract_flights", {}, f"extract_{turn}"))
    flights = sorted(
        (flight.model_dump(mode="json") for flight in extracted[-1]),
        key=lambda flight: flight["price"],
    )
    rejected = _script.retries(messages)
    candidates = flights if not rejected else [f for f in flights if _matches(f, rejected)]
    if not candidates:
        return _script.calls(_script.call(none_tool, {}, f"none_{turn}"))
    attempt = len(rejected)
    return _script.calls(_script.call(found_tool, candidates[0], f"flight_{turn}_{attempt}"))


def _matches(flight: dict[str, object], rejections: list[str]) -> bool:
    """Whether `flight` avoids what the validator complained about."""
    complaint = " ".join(rejections)
    wanted_date = re.search(r"should be (\d{4}-\d{2}-\d{2})", complaint)
    wanted_destination = re.search(r"Destination should be ([A-Z]{3})", complaint)
    return not (
        (wanted_date and flight["date"] != wanted_date[1])
        or (wanted_destination and flight["destination"] != wanted_destination[1])
    )


search_agent = Agent[Deps, FlightDetails | NoFlightFound](
    recorded_model(_search_model, name="flight_search"),
    output_type=FlightDetails | NoFlightFound,  # type: ignore[arg-type]
    retries=4,
    deps_type=Deps,
    system_prompt="Your job is to find the cheapest flight for the user on the given date.",
)


@search_agent.tool
async def extract_flights(ctx: RunContext[Deps]) -> list[FlightDetails]:
    """Get details of all flights."""
    result = await extraction_agent.run(ctx.deps.web_page_text, usage=ctx.usage)
    return result.output


@search_agent.output_validator
async def validate_output(
    ctx: RunContext[Deps], output: FlightDetails | NoFlightFound
) -> FlightDetails | NoFlightFound:
    """Procedural validation that the flight meets the constraints."""
    if isinstance(output, NoFlightFound):
        return output
    errors: list[str] = []
    if output.origin != ctx.deps.req_origin:
        errors.append(f"Flight should have origin {ctx.deps.req_origin}, not {output.origin}")
    if output.destination != ctx.deps.req_destination:
        errors.append(f"Destination should be {ctx.deps.req_destination}, not {output.destination}")
    if output.date != ctx.deps.req_date:
        errors.append(f"Flight date should be {ctx.deps.req_date}, not {output.date}")
    if errors:
        raise ModelRetry("\n".join(errors))
    return output


class SeatPreference(BaseModel):
    row: int = Field(ge=1, le=30)
    seat: Literal["A", "B", "C", "D", "E", "F"]


class Failed(BaseModel):
    """Unable to extract a seat selection."""


def _seat_model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    tools = {tool.name for tool in info.output_tools}
    seat_tool = next(name for name in tools if "SeatPreference" in name)
    failed_tool = next(name for name in tools if "Failed" in name)
    found = re.search(r"\b(\d{1,2})([A-F])\b", _script.prompt(messages))
    if found:
        return _script.calls(
            _script.call(seat_tool, {"row": int(found[1]), "seat": found[2]}, "seat_0")
        )
    return _script.calls(_script.call(failed_tool, {}, "seat_0"))


seat_preference_agent = Agent[None, SeatPreference | Failed](
    recorded_model(_seat_model, name="seat_preference"),
    output_type=SeatPreference | Failed,  # type: ignore[arg-type]
    system_prompt=(
        "Extract the user's seat preference. "
        "Seats A and F are window seats. "
        "Row 1 is the front row and has extra leg room. "
        "Rows 14, and 20 also have extra leg room. "
    ),
)
