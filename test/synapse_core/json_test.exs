defmodule SynapseCore.JSONTest do
  # SynapseCore.JSON converts small payloads on the caller's scheduler and
  # the others on a dirty one: the result is the same either way.
  use ExUnit.Case, async: true

  alias SynapseCore.{Error, JSON}

  @payloads %{
    "scalars" => %{"a" => [1, 2.5, nil, true, false, "é"]},
    "a long string" => String.duplicate("é", 20 * 1024),
    "a long list" => Enum.to_list(1..10_000),
    "a wide map" => Map.new(1..1_000, &{"k#{&1}", [&1]}),
    "a deep list" => Enum.reduce(1..100, [], &[&1, &2]),
    "a bignum" => [2 ** 70, -(2 ** 200)]
  }

  test "small? tells the payloads a normal scheduler takes" do
    assert JSON.small?(@payloads["scalars"])
    assert JSON.small?(String.duplicate("x", 16 * 1024))
    assert JSON.small?(%{"n" => 2 ** 64 - 1})
    refute JSON.small?(String.duplicate("x", 16 * 1024 + 1))
    refute JSON.small?([String.duplicate("x", 10 * 1024), String.duplicate("y", 10 * 1024)])
    refute JSON.small?(Enum.to_list(1..64))
    refute JSON.small?(Map.new(1..64, &{&1, &1}))
    refute JSON.small?(Enum.reduce(1..64, [], &[&1, &2]))
    refute JSON.small?(2 ** 64)
    # An improper list and other terms are walked too (their encoding fails).
    assert JSON.small?([1 | 2])
    refute JSON.small?(List.to_tuple(Enum.to_list(1..100)))
  end

  test "payloads of every size survive a round trip exactly" do
    for {what, payload} <- @payloads do
      assert {:ok, json} = JSON.encode(payload), what
      assert JSON.small?(payload) == (what == "scalars")
      assert {:ok, ^payload} = JSON.decode(json), what
    end
  end

  test "errors are the same on either scheduler" do
    big_tuple = {String.duplicate("x", 20 * 1024)}
    assert {:error, %Error{kind: :invalid_argument}} = JSON.encode({:a, :tuple})
    assert {:error, %Error{kind: :invalid_argument}} = JSON.encode([big_tuple])
    not_utf8 = <<255>>
    assert {:error, %Error{kind: :invalid_argument}} = JSON.encode(not_utf8)

    assert {:error, %Error{kind: :invalid_argument}} =
             JSON.encode([not_utf8 | @payloads["a long list"]])

    long_invalid = "[" <> String.duplicate("1,", 10_000) <> "]"
    assert {:error, %Error{kind: :invalid_argument, message: short}} = JSON.decode("[1,]")
    assert {:error, %Error{kind: :invalid_argument, message: long}} = JSON.decode(long_invalid)
    assert short =~ "invalid JSON" and long =~ "invalid JSON"
    assert {:error, %Error{kind: :unrepresentable, message: nan}} = JSON.decode(~s({"x": NaN}))
    assert nan =~ "the data holds NaN" and not (nan =~ "worker")
    nan_long = ~s({"x": NaN, "pad": ") <> String.duplicate("p", 20 * 1024) <> ~s("})
    assert {:error, %Error{kind: :unrepresentable}} = JSON.decode(nan_long)

    # Nesting beyond the limit, in a payload small enough for a normal scheduler.
    deep = String.duplicate("[", 5_000) <> String.duplicate("]", 5_000)
    assert byte_size(deep) <= 16 * 1024
    assert {:error, %Error{kind: :resource_exhausted, message: message}} = JSON.decode(deep)
    assert message == "the data is nested deeper than 128 levels"
  end
end
