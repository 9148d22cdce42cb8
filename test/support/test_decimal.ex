defmodule SynapseCore.TestDecimal do
  @moduledoc false
  # A decimal number for the Bridge's custom type tests (there is no Decimal
  # package here): `coef * 10^-places`, converted to and from Python's
  # Decimal as a string.

  defstruct [:coef, :places]

  @type t :: %__MODULE__{coef: integer(), places: non_neg_integer()}

  def new(text) when is_binary(text), do: from_wire(text)

  @doc "The string Python's `Decimal` reads; raises for anything but a decimal."
  def to_wire(%__MODULE__{coef: coef, places: 0}), do: Integer.to_string(coef)

  def to_wire(%__MODULE__{coef: coef, places: places}) do
    digits = coef |> abs() |> Integer.to_string() |> String.pad_leading(places + 1, "0")
    {whole, fraction} = String.split_at(digits, -places)
    if(coef < 0, do: "-", else: "") <> whole <> "." <> fraction
  end

  def to_wire(other), do: raise(ArgumentError, "not a decimal: #{inspect(other)}")

  @doc "A decimal from the string Python's `Decimal` writes."
  def from_wire(text) do
    case Regex.run(~r/^(-?)(\d+)(?:\.(\d+))?$/, text) do
      [_, sign, whole] ->
        %__MODULE__{coef: String.to_integer(sign <> whole), places: 0}

      [_, sign, whole, fraction] ->
        %__MODULE__{
          coef: String.to_integer(sign <> whole <> fraction),
          places: String.length(fraction)
        }

      nil ->
        raise ArgumentError, "not a decimal: #{inspect(text)}"
    end
  end
end
