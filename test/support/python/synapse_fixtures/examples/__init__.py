"""Our own versions of the example agents of pydantic-ai's documentation.

bank_support, weather_agent, roulette_wheel, flight_booking and
pydantic_model, written from the documentation's descriptions of them, with
the model swapped for a scripted `FunctionModel` that records what it
receives (`synapse_fixtures.recording`), and the network services they call
swapped for local fakes. The fidelity suite runs each through Synapse and
directly in Python (`synapse_fixtures.direct_run`) and compares the two.
"""
