defmodule SynapseCore.Prompt do
  url_schema = [
    media_type: [
      type: :non_empty_string,
      doc:
        "the media type, when the URL's extension does not tell it (pydantic-ai's `media_type`)."
    ],
    identifier: [
      type: :non_empty_string,
      doc: "how the model and tool calls refer to the file (pydantic-ai's `identifier`)."
    ],
    force_download: [
      type: {:in, [false, true, :allow_local]},
      default: false,
      doc: """
      whether pydantic-ai downloads the file rather than sending the URL
      (`true`; `:allow_local` for `'allow-local'`, which allows private
      addresses).
      """
    ],
    vendor_metadata: [
      type: :map,
      doc: "provider-specific metadata (JSON data), e.g. `%{\"detail\" => \"high\"}` for OpenAI."
    ]
  ]

  binary_schema = Keyword.take(url_schema, [:identifier, :vendor_metadata])

  uploaded_schema = Keyword.take(url_schema, [:media_type, :identifier, :vendor_metadata])

  cache_schema = [
    ttl: [
      type: {:in, ["5m", "1h"]},
      default: "5m",
      doc: "how long the provider caches the prompt up to this point."
    ]
  ]

  text_schema = [
    metadata: [
      type: :any,
      doc: "data for the application (JSON data), never sent to the model."
    ]
  ]

  structured_schema = [
    tag: [
      type: :non_empty_string,
      doc: "the tag the value is wrapped in for the model, e.g. `\"ui_state\"`."
    ],
    description: [
      type: :non_empty_string,
      doc: "what the value is, for the model, written before it."
    ],
    format: [
      type: {:in, [:json, :xml]},
      doc:
        "how the value is rendered as text (pydantic-ai's `'json'` or `'xml'`); its `render` by default."
    ]
  ]

  @moduledoc """
  A run's prompt: a string, or a list of parts (multimodal input), which
  becomes the list a Python caller passes as pydantic-ai's `user_prompt`;
  or `nil`, pydantic-ai's `None`: no new user message, the run goes on from
  its `:message_history` (resuming deferred tool calls, say). A string is a
  user message even when it is empty, as in pydantic-ai.

      SynapseCore.Agent.run_sync(:vision, [
        "What is in this picture, and in that one?",
        {:binary, File.read!("cat.png"), "image/png"},
        {:image_url, "https://example.com/dog.jpg", vendor_metadata: %{"detail" => "low"}}
      ])

  | part | pydantic-ai |
  |------|-------------|
  | `"text"` | `"text"` |
  | `{:text, text}`, `{:text, text, opts}` | `TextContent(text, ...)` |
  | `{:binary, data, media_type}`, `{:binary, data, media_type, opts}` | `BinaryContent(data, media_type=..., ...)` |
  | `{:image_url, url}`, `{:image_url, url, opts}` | `ImageUrl(url, ...)` |
  | `{:audio_url, url}`, `{:audio_url, url, opts}` | `AudioUrl(url, ...)` |
  | `{:video_url, url}`, `{:video_url, url, opts}` | `VideoUrl(url, ...)` |
  | `{:document_url, url}`, `{:document_url, url, opts}` | `DocumentUrl(url, ...)` |
  | `{:structured, value}`, `{:structured, value, opts}` | `StructuredContent(value, ...)` (`value` as JSON data) |
  | `{:uploaded_file, file_id, provider_name}`, `{:uploaded_file, file_id, provider_name, opts}` | `UploadedFile(file_id, provider_name, ...)` |
  | `:cache_point`, `{:cache_point, opts}` | `CachePoint(...)` |

  A binary's data travels to the worker as raw bytes (protobuf `bytes`, no
  base64 on the way), and reaches the model as the `BinaryContent` a Python
  caller builds (pydantic-ai encodes it for the provider). The whole
  request, binaries included, must fit in the agent's `:max_message_bytes`:
  a larger one fails with an error of kind `:resource_exhausted` before anything
  is sent.

  A prompt that is not valid (a part of an unknown type, text that is not
  UTF-8, an unknown or ill-typed option, an empty or improper list) fails
  the run with an error of kind `:invalid_argument` naming the part, and
  nothing is sent.

  ## Options of binary parts

  #{SynapseCore.Options.docs(binary_schema)}

  ## Options of URL parts

  #{SynapseCore.Options.docs(url_schema)}

  ## Options of uploaded files

  #{SynapseCore.Options.docs(uploaded_schema)}

  ## Options of text parts

  #{SynapseCore.Options.docs(text_schema)}

  ## Options of structured content

  #{SynapseCore.Options.docs(structured_schema)}

  ## Options of cache points

  #{SynapseCore.Options.docs(cache_schema)}
  """

  alias SynapseCore.{Error, Options}

  @url_schema url_schema
  @binary_schema binary_schema
  @uploaded_schema uploaded_schema
  @cache_schema cache_schema
  @text_schema text_schema
  @structured_schema structured_schema

  # Each URL part and pydantic-ai's `kind` of it.
  @url_kinds %{
    image_url: "image-url",
    audio_url: "audio-url",
    video_url: "video-url",
    document_url: "document-url"
  }

  @type url_kind :: :image_url | :audio_url | :video_url | :document_url

  @type part ::
          String.t()
          | {:text, String.t()}
          | {:text, String.t(), keyword()}
          | {:binary, binary(), String.t()}
          | {:binary, binary(), String.t(), keyword()}
          | {url_kind(), String.t()}
          | {url_kind(), String.t(), keyword()}
          | {:structured, term()}
          | {:structured, term(), keyword()}
          | {:uploaded_file, String.t(), String.t()}
          | {:uploaded_file, String.t(), String.t(), keyword()}
          | :cache_point
          | {:cache_point, keyword()}

  @typedoc "A prompt: a string, or a non-empty list of parts."
  @type t :: String.t() | [part(), ...] | nil

  @doc """
  Checks `prompt`; `{:error, %SynapseCore.Error{kind: :invalid_argument}}`
  names the first part that is not valid.

      iex> SynapseCore.Prompt.validate(["Describe it", {:binary, <<137, 80>>, "image/png"}])
      :ok
      iex> {:error, error} = SynapseCore.Prompt.validate(["Describe it", {:gif, "cat"}])
      iex> error.message
      "prompt part 1: not a part of a prompt (see SynapseCore.Prompt), got: {:gif, \\"cat\\"}"
  """
  @spec validate(term()) :: :ok | {:error, Error.t()}
  def validate(prompt) do
    _ = wire(prompt)
    :ok
  rescue
    error in ArgumentError -> {:error, Error.new(:invalid_argument, error.message)}
  end

  @doc false
  # The prompt as the NIF takes it: `{text, parts}`, with `text` nil for a
  # list of parts or no prompt (see native/synapse_native/src/prompt.rs).
  # Raises ArgumentError for a prompt `validate/1` refuses.
  @spec wire(t()) :: {String.t() | nil, [tuple()]}
  def wire(nil), do: {nil, []}

  def wire(prompt) when is_binary(prompt) do
    if String.valid?(prompt),
      do: {prompt, []},
      else: raise(ArgumentError, "the prompt is not valid UTF-8")
  end

  def wire([_ | _] = parts) do
    if List.improper?(parts),
      do: raise(ArgumentError, "the prompt is an improper list (a list of parts must end in [])")

    if Enum.all?(parts, &is_integer/1),
      do: raise(ArgumentError, "the prompt is a charlist: give a string (or a list of parts)")

    wired =
      parts
      |> Enum.with_index()
      |> Enum.map(fn {part, index} ->
        try do
          part(part)
        rescue
          error in ArgumentError ->
            reraise ArgumentError, "prompt part #{index}: #{error.message}", __STACKTRACE__
        end
      end)

    {nil, wired}
  end

  def wire([]), do: raise(ArgumentError, "the prompt is an empty list of parts")

  def wire(other),
    do:
      raise(
        ArgumentError,
        "the prompt must be a string, a list of parts or nil, got: #{show(other)}"
      )

  defp part(text) when is_binary(text), do: {:text, text!(text)}

  defp part({:text, text}), do: part({:text, text, []})

  defp part({:text, text, opts}),
    do: content("text-content", %{"content" => text!(text)}, opts, @text_schema)

  # Data that is not a binary falls through to the last clause, which
  # shows the part as given, not as expanded here.
  defp part({:binary, data, media_type}) when is_binary(data),
    do: part({:binary, data, media_type, []})

  defp part({:binary, data, media_type, opts}) when is_binary(data) do
    options = Options.validate!(opts, @binary_schema, "a binary part")
    {:binary, data, text!(media_type), options[:identifier], options[:vendor_metadata]}
  end

  defp part({kind, url}) when is_map_key(@url_kinds, kind), do: part({kind, url, []})

  defp part({kind, url, opts}) when is_map_key(@url_kinds, kind) do
    content(Map.fetch!(@url_kinds, kind), %{"url" => text!(url)}, opts, @url_schema)
  end

  defp part({:uploaded_file, file_id, provider}),
    do: part({:uploaded_file, file_id, provider, []})

  defp part({:uploaded_file, file_id, provider, opts}) do
    fields = %{"file_id" => text!(file_id), "provider_name" => text!(provider)}
    content("uploaded-file", fields, opts, @uploaded_schema)
  end

  defp part({:structured, value}), do: part({:structured, value, []})

  defp part({:structured, value, opts}),
    do: content("structured-content", %{"value" => value}, opts, @structured_schema)

  defp part(:cache_point), do: part({:cache_point, []})
  defp part({:cache_point, opts}), do: content("cache-point", %{}, opts, @cache_schema)

  defp part(other),
    do:
      raise(ArgumentError, "not a part of a prompt (see SynapseCore.Prompt), got: #{show(other)}")

  # A part in pydantic-ai's JSON form.
  defp content(kind, fields, opts, schema) do
    options = Options.validate!(opts, schema, "a #{kind} part")

    json =
      for {key, value} <- options,
          value != nil,
          into: fields,
          do: {Atom.to_string(key), json(value)}

    {:content, Map.put(json, "kind", kind)}
  end

  defp json(:allow_local), do: "allow-local"
  defp json(format) when format in [:json, :xml], do: Atom.to_string(format)
  defp json(value), do: value

  defp text!(text) when is_binary(text) do
    if String.valid?(text), do: text, else: raise(ArgumentError, "the text is not valid UTF-8")
  end

  defp text!(other), do: raise(ArgumentError, "expected a string, got: #{show(other)}")

  defp show(value), do: inspect(value, limit: 5, printable_limit: 100)
end
