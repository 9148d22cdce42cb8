# The Synapse Bridge on the original example: a typed Python function and a
# Pydantic model (my_module.py, next to this file) become a typed Elixir
# client, served by a supervised Python worker.
#
#   mix run examples/bridge/demo.exs
#
# A real project runs `mix synapse.gen.bridge my_module --python-path py` once
# (it writes lib/my_module.ex and priv/synapse_bridge/) and puts
# {SynapseCore.Bridge, ...} in its supervision tree; this script does both on
# the fly, in a temporary directory.

here = Path.expand(".", __DIR__)
out = Path.join(System.tmp_dir!(), "synapse-bridge-demo")
File.rm_rf!(out)

{:ok, files} =
  Mix.Tasks.Synapse.Gen.Bridge.generate("my_module",
    python_path: here,
    lib: Path.join(out, "lib"),
    out: Path.join(out, "priv")
  )

IO.puts("generated:\n  " <> Enum.join(files, "\n  "))
Enum.each(Enum.filter(files, &String.ends_with?(&1, ".ex")), &Code.compile_file/1)

{:ok, _} =
  Supervisor.start_link(
    [
      {SynapseCore.Bridge,
       name: :my_module, module: "my_module", python_path: [Path.join(out, "priv"), here]}
    ],
    strategy: :one_for_one
  )

# The generated module is compiled at run time here, so call it through apply/3.
client = MyModule

IO.inspect(apply(client, :process_data, [:my_module, %{name: "Alice", age: 30}]),
  label: "process_data"
)

IO.inspect(apply(client, :process_data, [:my_module, %{name: "Alice"}]), label: "a missing field")
