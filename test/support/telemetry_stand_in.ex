defmodule :telemetry do
  @moduledoc false
  # An in-repo stand-in for the `:telemetry` library's API (hex is out of
  # reach here), compiled only in the test environment: handlers attached by
  # id to event names, called in the emitting process with
  # `(event, measurements, metadata, config)`, detached when they raise.

  @key {__MODULE__, :handlers}

  def attach(id, event, function, config), do: attach_many(id, [event], function, config)

  def attach_many(id, events, function, config) when is_function(function, 4) do
    :global.trans({@key, self()}, fn ->
      handlers = :persistent_term.get(@key, [])

      if Enum.any?(handlers, &(elem(&1, 0) == id)) do
        {:error, :already_exists}
      else
        :persistent_term.put(@key, [{id, events, function, config} | handlers])
        :ok
      end
    end)
  end

  def detach(id) do
    :global.trans({@key, self()}, fn ->
      handlers = :persistent_term.get(@key, [])

      case Enum.split_with(handlers, &(elem(&1, 0) == id)) do
        {[], _} ->
          {:error, :not_found}

        {_, rest} ->
          :persistent_term.put(@key, rest)
          :ok
      end
    end)
  end

  def execute(event, measurements, metadata) when is_map(measurements) and is_map(metadata) do
    for {id, events, function, config} <- :persistent_term.get(@key, []), event in events do
      try do
        function.(event, measurements, metadata, config)
      rescue
        _ -> detach(id)
      end
    end

    :ok
  end
end
