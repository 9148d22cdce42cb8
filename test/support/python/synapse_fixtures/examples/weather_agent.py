"""weather_agent: parallel tool calls through a client the deps factory opens.

The documentation's example calls a geocoding and a weather API with an HTTP
client in its deps; here the client is a local fake, opened per run by the
deps factory `open_client` (an async context manager, as `AsyncClient` is).

The model asks for the coordinates of every place the prompt names ("in X
and in Y") in one response (parallel calls), then for the weather at each,
again in one response, then answers a sentence built from the tools' returns.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from pydantic_ai import Agent, RunContext
from pydantic_ai.messages import ModelMessage, ModelResponse
from pydantic_ai.models.function import AgentInfo

from synapse_fixtures.examples import _script
from synapse_fixtures.recording import recorded_model

_PLACES = {
    "London": (51.5072, -0.1276, 21, "Sunny"),
    "Wiltshire": (51.3492, -1.9927, 16, "Light rain"),
    "Paris": (48.8566, 2.3522, 24, "Partly cloudy"),
}


class FakeWeatherClient:
    """Stands for the HTTP client of the documentation's example."""

    def __init__(self) -> None:
        self.open = True

    async def geocode(self, location: str) -> tuple[float, float]:
        lat, lng, _, _ = _PLACES.get(location, (0.0, 0.0, 0, ""))
        return lat, lng

    async def weather(self, lat: float, lng: float) -> dict[str, Any]:
        for place_lat, place_lng, temperature, description in _PLACES.values():
            if (place_lat, place_lng) == (lat, lng):
                # Not in sorted key order, on purpose: the history must keep it.
                return {"temperature": f"{temperature} °C", "description": description}
        return {"temperature": "unknown", "description": "unknown"}


@dataclass
class Deps:
    client: FakeWeatherClient


@contextlib.asynccontextmanager
async def open_client() -> AsyncIterator[Deps]:
    client = FakeWeatherClient()
    try:
        yield Deps(client=client)
    finally:
        client.open = False


class LatLng(BaseModel):
    lat: float
    lng: float


def _places(question: str) -> list[str]:
    return re.findall(r"\bin ([A-Z][a-z]+)", question)


def _model(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    turn = _script.turns(messages)
    places = _places(_script.prompt(messages))
    coordinates = _script.returns(messages, "get_lat_lng")
    if not coordinates:
        return _script.calls(
            *(
                _script.call("get_lat_lng", {"location_description": place}, f"geo_{turn}_{i}")
                for i, place in enumerate(places)
            )
        )
    weathers = _script.returns(messages, "get_weather")
    if not weathers:
        return _script.calls(
            *(
                _script.call(
                    "get_weather",
                    {"lat": point.lat, "lng": point.lng},
                    f"weather_{turn}_{i}",
                )
                for i, point in enumerate(coordinates)
            )
        )
    sentences = [
        f"{place}: {weather['description']}, {weather['temperature']}"
        for place, weather in zip(places, weathers, strict=True)
    ]
    return _script.text("; ".join(sentences) + ".")


weather_agent = Agent(
    recorded_model(_model, name="weather_agent"),
    instructions="Be concise, reply with one sentence.",
    deps_type=Deps,
    retries=2,
)


@weather_agent.tool
async def get_lat_lng(ctx: RunContext[Deps], location_description: str) -> LatLng:
    """Get the latitude and longitude of a location.

    Args:
        location_description: A description of a location.
    """
    assert ctx.deps.client.open, "the client is closed"
    lat, lng = await ctx.deps.client.geocode(location_description)
    return LatLng(lat=lat, lng=lng)


@weather_agent.tool
async def get_weather(ctx: RunContext[Deps], lat: float, lng: float) -> dict[str, Any]:
    """Get the weather at a location.

    Args:
        lat: Latitude of the location.
        lng: Longitude of the location.
    """
    return await ctx.deps.client.weather(lat, lng)
