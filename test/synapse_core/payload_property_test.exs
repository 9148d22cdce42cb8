defmodule SynapseCore.PayloadPropertyTest do
  # Generated inputs for the Elixir <-> Rust payload conversion (the JSON
  # conversion every request and reply goes through). Bounded counts, a
  # fixed seed; the seed and the failing input are printed on failure.
  use ExUnit.Case, async: true

  alias SynapseCore.{Error, JSON}

  @seed 20_261_121
  @cases 400

  setup do
    :rand.seed(:exsss, @seed)
    :ok
  end

  test "JSON-able terms survive the round trip" do
    for n <- 1..@cases do
      term = json_term(5)
      assert {:ok, json} = JSON.encode(term), failure(n, term)
      assert {:ok, decoded} = JSON.decode(json), failure(n, term)
      assert decoded == normalize(term), failure(n, term)
    end
  end

  test "terms with no JSON form are refused with a typed error, never a crash" do
    for n <- 1..@cases do
      term = poison(json_term(3))

      assert {:error, %Error{kind: kind, message: message}} = JSON.encode(term), failure(n, term)
      assert kind in [:invalid_argument, :resource_exhausted], failure(n, term)
      assert is_binary(message) and message != "", failure(n, term)
    end
  end

  test "arbitrary bytes decode to data or a typed error, never a crash" do
    for n <- 1..@cases do
      bytes =
        case rem(n, 3) do
          0 ->
            :rand.bytes(:rand.uniform(64))

          1 ->
            n |> json_term_for_bytes() |> mangle()

          2 ->
            String.duplicate("[", :rand.uniform(300)) <> String.duplicate("]", :rand.uniform(300))
        end

      case JSON.decode(bytes) do
        {:ok, _term} ->
          :ok

        {:error, %Error{kind: kind}} ->
          assert kind in [:invalid_argument, :resource_exhausted, :unrepresentable],
                 failure(n, bytes)
      end
    end
  end

  defp failure(n, input),
    do: "case #{n} (seed #{@seed}) failed for: #{inspect(input, limit: 30, printable_limit: 100)}"

  # Terms whose JSON form is exact: string keys, no atoms but nil/booleans.
  defp json_term(0), do: scalar()

  defp json_term(depth) do
    case :rand.uniform(6) do
      1 -> for _ <- 1..:rand.uniform(4), into: %{}, do: {string(), json_term(depth - 1)}
      2 -> for _ <- 1..:rand.uniform(4), do: json_term(depth - 1)
      3 -> %{}
      4 -> []
      _ -> scalar()
    end
  end

  defp scalar do
    case :rand.uniform(9) do
      1 -> nil
      2 -> :rand.uniform(2) == 1
      3 -> :rand.uniform(1_000_000) - 500_000
      4 -> Enum.random([9_223_372_036_854_775_807, -9_223_372_036_854_775_808, 0])
      # Beyond 64 bits too: JSON numbers have no size, and nothing narrows them.
      5 -> Enum.random([18_446_744_073_709_551_615, 2 ** 70, -(2 ** 100) - 1])
      6 -> (:rand.uniform() - 0.5) * :math.pow(10, :rand.uniform(40) - 20)
      7 -> Enum.random([0.1, 1.0e300, -2.5e-300, 1.5])
      _ -> string()
    end
  end

  # Random UTF-8, escapes and non-ASCII included.
  defp string do
    for _ <- 0..:rand.uniform(12), into: "" do
      Enum.random([
        <<Enum.random(?a..?z)>>,
        "\"",
        "\\",
        "\n",
        "\u0000",
        "é",
        "漢",
        "🦀",
        <<Enum.random(0x20..0x7E)>>
      ])
    end
  end

  # Atoms other than nil/true/false become strings; atom keys become string keys.
  defp normalize(map) when is_map(map),
    do: Map.new(map, fn {k, v} -> {normalize_key(k), normalize(v)} end)

  defp normalize(list) when is_list(list), do: Enum.map(list, &normalize/1)

  defp normalize(atom) when is_atom(atom) and atom not in [nil, true, false],
    do: Atom.to_string(atom)

  defp normalize(other), do: other

  defp normalize_key(key) when is_atom(key), do: Atom.to_string(key)
  defp normalize_key(key), do: key

  # Puts one term with no JSON form somewhere in `term`.
  defp poison(term) do
    bad =
      Enum.random([
        {:a, :tuple},
        self(),
        make_ref(),
        fn -> :ok end,
        [1 | 2],
        <<0xFF, 0xFE>>,
        <<1::3>>,
        %{{:tuple, :key} => 1},
        # Two keys of one name: one value would be lost.
        %{:dup => 1, "dup" => 2},
        Enum.reduce(1..200, 1, fn _, acc -> [acc] end)
      ])

    insert(term, bad)
  end

  defp insert(map, bad) when is_map(map) and map_size(map) > 0 do
    key = map |> Map.keys() |> Enum.random()
    Map.put(map, key, insert(map[key], bad))
  end

  defp insert([_ | _] = list, bad) do
    index = :rand.uniform(length(list)) - 1
    List.update_at(list, index, &insert(&1, bad))
  end

  defp insert(_leaf, bad), do: %{"x" => bad}

  defp json_term_for_bytes(_n) do
    {:ok, json} = JSON.encode(json_term(3))
    json
  end

  # Flips, drops or duplicates a few bytes of valid JSON.
  defp mangle(""), do: "{"

  defp mangle(json) do
    Enum.reduce(1..:rand.uniform(3), json, fn _, acc ->
      at = :rand.uniform(max(byte_size(acc), 1)) - 1
      <<before::binary-size(at), rest::binary>> = acc

      case {:rand.uniform(3), rest} do
        {1, <<_, tail::binary>>} -> before <> tail
        {2, _} -> before <> <<:rand.uniform(255)>> <> rest
        _ -> before <> rest <> rest
      end
    end)
  end
end
