defmodule SynapseCore.PromptTest do
  # A prompt made of parts (text, binaries, URLs, ...) reaches the model as
  # the objects a Python caller builds (synapse_fixtures.multimodal's model
  # answers with what it got, compared with the same agent run directly in
  # Python; see SynapseCore.Fidelity); bad parts are typed errors.
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Agent, Error, Fidelity, Messages, Result}

  @moduletag capture_log: true

  @agent "synapse_fixtures.multimodal:describing_agent"

  # Every byte value, twice: not UTF-8, and not text at all.
  @bytes :binary.copy(:binary.list_to_bin(Enum.to_list(0..255)), 2)

  defp start!(extra \\ []) do
    start_fixture_agent!("describing", Keyword.put(extra, :agent, @agent))
  end

  # Parts in direct_run's JSON form (see SynapseCore.Fidelity.prompt/1).
  defp parts do
    [
      "Describe these.",
      %{"kind" => "binary", "data" => Base.encode64(@bytes), "media_type" => "image/png"},
      %{
        "kind" => "binary",
        "data" => Base.encode64("%PDF-1.7 ..."),
        "media_type" => "application/pdf",
        "identifier" => "report",
        "vendor_metadata" => %{"detail" => "high"}
      },
      %{"kind" => "binary", "data" => Base.encode64(<<1, 2, 3>>), "media_type" => "audio/wav"},
      %{"kind" => "image-url", "url" => "https://example.com/cat.png"},
      %{
        "kind" => "image-url",
        "url" => "https://example.com/image?id=1",
        "media_type" => "image/jpeg",
        "identifier" => "dog",
        "force_download" => "allow-local",
        "vendor_metadata" => %{"detail" => "low"}
      },
      %{"kind" => "audio-url", "url" => "https://example.com/a.mp3", "force_download" => true},
      %{"kind" => "video-url", "url" => "https://example.com/v.mp4"},
      %{"kind" => "document-url", "url" => "https://example.com/d.pdf", "identifier" => "doc"},
      %{"kind" => "uploaded-file", "file_id" => "file-123", "provider_name" => "openai"},
      %{"kind" => "text-content", "content" => "tagged text", "metadata" => %{"source" => "crm"}},
      %{"kind" => "structured-content", "value" => %{"page" => "cart", "items" => [1, 2]}},
      %{
        "kind" => "structured-content",
        "value" => %{"page" => "cart"},
        "tag" => "ui_state",
        "description" => "What the user sees.",
        "format" => "xml"
      },
      %{"kind" => "cache-point", "ttl" => "1h"},
      "And that is all."
    ]
  end

  test "every kind of part reaches the model as Python's objects: run_sync, run_stream, with a history" do
    record = Fidelity.record_path("synapse")
    name = start!(env: [{"SYNAPSE_FIDELITY_RECORD", record}])

    turns = [
      %{"prompt" => parts()},
      %{"prompt" => parts(), "history" => true, "stream" => true},
      %{"prompt" => ["again", hd(tl(parts()))], "history" => true}
    ]

    synapse = Fidelity.assert_same_as_python!(name, @agent, turns, record)

    # What the model got, per part (checked against Python above; here
    # against what was sent).
    [%{"output" => output} | _] = synapse
    {:ok, [described]} = SynapseCore.JSON.decode(output)

    assert [
             %{"class" => "str", "value" => "Describe these."},
             %{
               "class" => "BinaryContent",
               "fields" => %{"data" => data, "media_type" => "image/png"}
             },
             %{
               "class" => "BinaryContent",
               "fields" => pdf,
               "derived" => %{"identifier" => "report"}
             },
             %{"class" => "BinaryContent"},
             %{"class" => "ImageUrl", "derived" => %{"media_type" => "image/png"}},
             %{
               "class" => "ImageUrl",
               "fields" => image,
               "derived" => %{"media_type" => "image/jpeg"}
             },
             %{"class" => "AudioUrl", "fields" => %{"force_download" => true}},
             %{"class" => "VideoUrl"},
             %{"class" => "DocumentUrl", "derived" => %{"identifier" => "doc"}},
             %{"class" => "UploadedFile", "fields" => %{"file_id" => "file-123"}},
             %{"class" => "TextContent", "fields" => %{"metadata" => %{"source" => "crm"}}},
             %{"class" => "StructuredContent", "fields" => %{"value" => %{"items" => [1, 2]}}},
             %{
               "class" => "StructuredContent",
               "fields" => %{"content" => "What the user sees." <> _}
             },
             %{"class" => "CachePoint", "fields" => %{"ttl" => "1h"}},
             %{"class" => "str", "value" => "And that is all."}
           ] = described

    assert data == %{
             "size" => byte_size(@bytes),
             "sha256" => :crypto.hash(:sha256, @bytes) |> Base.encode16(case: :lower)
           }

    assert %{"vendor_metadata" => %{"detail" => "high"}, "_identifier" => "report"} = pdf
    assert %{"force_download" => "allow-local", "vendor_metadata" => %{"detail" => "low"}} = image

    # The history holds the binary as pydantic-ai serializes it (URL-safe base64).
    [%{"result" => %Result{messages: messages}} | _] = synapse

    assert [%{"content" => [_, %{"kind" => "binary", "data" => base64} | _]}] =
             for(
               %{"kind" => "request", "parts" => parts} <- Messages.decode!(messages),
               %{"part_kind" => "user-prompt"} = part <- parts,
               do: part
             )

    assert Base.url_decode64!(base64) == @bytes
  end

  test "an empty prompt is an empty user message and nil none, as \"\" and None in Python" do
    record = Fidelity.record_path("synapse")
    name = start!(env: [{"SYNAPSE_FIDELITY_RECORD", record}])
    turns = [%{"prompt" => ""}, %{"prompt" => "", "history" => true}, %{"history" => true}]
    [first, second, third] = Fidelity.assert_same_as_python!(name, @agent, turns, record)

    assert first["output"] == ~s([[{"class": "str", "value": ""}]])
    assert second["output"] == first["output"]
    # Nothing new to send: the run ends with the history's last answer.
    assert third["output"] == first["output"]
  end

  test "a run with Elixir tools and a streamed run take parts too" do
    name = start!()
    parts = ["look", {:binary, @bytes, "image/png"}]

    tool =
      SynapseCore.Tool.new(
        name: "noop",
        description: "Does nothing.",
        parameters: [],
        function: fn _ -> :ok end
      )

    {:ok, run} = Agent.run(name, parts, tools: [tool])
    assert {:ok, %Result{output: sync_output}} = Agent.await(run)
    assert {:ok, %Result{output: ^sync_output}} = Agent.run_sync(name, parts)

    assert {:result, %Result{output: ^sync_output}} =
             name |> Agent.run_stream(parts) |> Enum.to_list() |> List.last()
  end

  describe "bad prompts are typed errors, and nothing is sent" do
    test "parts of unknown types, non-UTF-8 text, bad options, an empty list" do
      name = start!()

      for {prompt, message} <- [
            {["ok", {:gif, "cat"}], ~r/prompt part 1: not a part of a prompt/},
            {[:image], ~r/prompt part 0: not a part of a prompt/},
            {["ok", <<0xFF, 0xFE>>], ~r/prompt part 1: the text is not valid UTF-8/},
            {[{:binary, "x", <<0xFF>>}], ~r/prompt part 0: the text is not valid UTF-8/},
            {[{:binary, 42, "image/png"}], ~r/prompt part 0: not a part of a prompt/},
            {[{:image_url, "https://e.com/a.png", nope: 1}],
             ~r/prompt part 0: unknown option :nope/},
            {[{:image_url, "https://e.com/a.png", force_download: "yes"}],
             ~r/prompt part 0: invalid :force_download/},
            {[{:binary, "x", "image/png", vendor_metadata: "high"}],
             ~r/prompt part 0: invalid :vendor_metadata/},
            {[{:cache_point, ttl: "2h"}], ~r/prompt part 0: invalid :ttl/},
            {[{:structured, %{}, format: "yaml"}], ~r/prompt part 0: invalid :format/},
            # Data with no JSON form, found as the request is encoded.
            {["ok", {:structured, {1, 2}}], ~r/prompt part 1: tuples have no JSON form/},
            {[{:text, "x", metadata: self()}], ~r/prompt part 0: a pid has no JSON form/},
            {[{:binary, "x", "image/png", vendor_metadata: %{"a" => self()}}],
             ~r/prompt part 0: vendor_metadata: a pid has no JSON form/},
            {[], ~r/empty list/},
            {<<0xFF>>, ~r/not valid UTF-8/}
          ] do
        assert {:error, %Error{kind: :invalid_argument, message: got}} =
                 Agent.run_sync(name, prompt)

        assert got =~ message

        assert_raise Error, message, fn -> name |> Agent.run_stream(prompt) |> Enum.to_list() end
        assert {:error, %Error{kind: :invalid_argument}} = Agent.run(name, prompt)
      end

      # The part as the user gave it, abbreviated (not the form it is expanded into).
      for {part, shown} <- [
            {{:binary, <<1::3>>, "image/png"}, ~s[{:binary, <<1::size(3)>>, "image/png"}]},
            {{:binary, <<1::3, :binary.copy("a", 100_000)::binary>>, "image/png"},
             ~s[{:binary, <<44, 44, 44, ...>>, "image/png"}]},
            {{:binary, 42, "image/png"}, ~s[{:binary, 42, "image/png"}]}
          ] do
        assert {:error, %Error{kind: :invalid_argument, message: message}} =
                 Agent.run_sync(name, ["ok", part])

        assert message ==
                 "prompt part 1: not a part of a prompt (see SynapseCore.Prompt), got: #{shown}"
      end

      assert {:ok, %Result{}} = Agent.run_sync(name, ["still serving"])
    end

    test "what only pydantic-ai can check: its error, typed" do
      name = start!()

      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Agent.run_sync(name, [{:uploaded_file, "file-1", "nowhere"}])

      assert message =~ "prompt part 0"
      assert message =~ "provider_name"

      # pydantic-ai refuses a framing tag when it renders the value.
      assert {:error, %Error{kind: :invalid_argument, message: message}} =
               Agent.run_sync(name, [{:structured, %{"a" => 1}, tag: "system"}])

      assert message =~ "prompt part 0"
    end

    test "a binary larger than :max_message_bytes is :resource_exhausted; smaller ones still pass" do
      name = start!(max_message_bytes: 64 * 1024)
      big = :binary.copy(@bytes, 200)

      for run <- [
            fn prompt -> Agent.run_sync(name, prompt) end,
            fn prompt -> with {:ok, run} <- Agent.run(name, prompt), do: Agent.await(run) end
          ] do
        assert {:error, %Error{kind: :resource_exhausted, message: message}} =
                 run.(["what is it?", {:binary, big, "image/png"}])

        assert message =~ "max_message_bytes"
      end

      assert_raise Error, ~r/max_message_bytes/, fn ->
        name |> Agent.run_stream(["what?", {:binary, big, "image/png"}]) |> Enum.to_list()
      end

      assert {:ok, %Result{}} =
               Agent.run_sync(name, ["what is it?", {:binary, @bytes, "image/png"}])
    end
  end
end
