defmodule SynapseCore.JSONStructsTest do
  # Structs crossing to Python (deps, tool results, settings): dates and
  # times as the ISO 8601 text Python's own types read back exactly; any
  # other struct refused by name, never sent as its internals.
  use ExUnit.Case, async: true

  alias SynapseCore.{Error, Native}

  defp json(term) do
    {:ok, json} = Native.json_encode(term)
    json
  end

  test "dates and times become ISO 8601 text, to the microsecond" do
    assert json(~D[2025-01-10]) == ~s("2025-01-10")
    assert json(~T[09:05:03]) == ~s("09:05:03")
    assert json(~T[09:05:03.120]) == ~s("09:05:03.120")
    assert json(~N[2025-01-10 09:05:03.123456]) == ~s("2025-01-10T09:05:03.123456")
    assert json(~U[2025-01-10 09:05:03Z]) == ~s("2025-01-10T09:05:03Z")

    paris = %DateTime{
      year: 2025,
      month: 1,
      day: 10,
      hour: 10,
      minute: 5,
      second: 3,
      microsecond: {0, 0},
      time_zone: "Europe/Paris",
      zone_abbr: "CET",
      utc_offset: 3600,
      std_offset: 0
    }

    assert json(paris) == ~s("2025-01-10T10:05:03+01:00")
    assert json(%{"when" => [~D[2025-01-10]]}) == ~s({"when":["2025-01-10"]})

    # Each as Elixir writes it.
    for value <- [~D[2025-01-10], ~T[09:05:03.120], ~N[2025-01-10 09:05:03.123456], paris] do
      assert json(value) == ~s("#{value.__struct__.to_iso8601(value)}")
    end
  end

  test "other structs are refused by name, not sent as their internals" do
    for struct <- [MapSet.new([1]), %URI{host: "x"}, %Error{kind: :x, message: "m"}] do
      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Native.json_encode(%{"deep" => [struct]})

      assert message =~ inspect(struct.__struct__)
    end
  end
end
