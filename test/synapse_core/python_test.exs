defmodule SynapseCore.PythonTest do
  use ExUnit.Case, async: true

  import SynapseCore.TestHelpers

  alias SynapseCore.{Error, Python}

  @moduletag capture_log: true
  @moduletag :tmp_dir

  describe "the environment's interpreter" do
    test "is the one mix synapse.setup built for this Mix environment" do
      assert {:ok, python} = Python.interpreter()
      assert python == Path.join(Python.env_dir(), "bin/python")

      assert Python.env_dir() ==
               Path.join(Mix.Project.build_path(), "synapse_python/.venv")
    end

    test "missing: says how to build it", %{tmp_dir: dir} do
      assert {:error, %Error{kind: :startup_failed, message: message}} =
               Python.env_interpreter(dir)

      assert message =~ "no Python environment at #{dir}"
      assert message =~ "run `mix synapse.setup`"
      assert message =~ "&SynapseCore.Release.python/1"
    end

    test "built on an interpreter this machine lacks: names it", %{tmp_dir: dir} do
      # What a release moved to a machine without its Python looks like.
      File.mkdir_p!(Path.join(dir, "bin"))
      File.write!(Path.join(dir, "pyvenv.cfg"), "home = /opt/gone/bin\nrelocatable = true\n")
      File.ln_s!("/opt/gone/bin/python3.11", Path.join(dir, "bin/python"))

      assert {:error, %Error{kind: :startup_failed, message: message}} =
               Python.env_interpreter(dir)

      assert message =~ "built on the interpreter in /opt/gone/bin, which is missing"
    end

    test "installed from a tarball on a machine without its interpreter: names it",
         %{tmp_dir: dir} do
      # Tarballs follow links: bin/python is a copy of the interpreter's
      # executable, which runs but finds no standard library.
      File.mkdir_p!(Path.join(dir, "bin"))
      File.write!(Path.join(dir, "pyvenv.cfg"), "home = /opt/gone/bin\nrelocatable = true\n")
      File.cp!(System.find_executable("true"), Path.join(dir, "bin/python"))

      assert {:error, %Error{kind: :startup_failed, message: message}} =
               Python.env_interpreter(dir)

      assert message =~ "built on the interpreter in /opt/gone/bin, which is missing"
    end
  end

  describe ":python_path" do
    test "{app, path} entries are checked and kept, paths expanded" do
      options =
        SynapseCore.Agent.Options.agent!(
          name: :x,
          model: "test",
          python_path: ["rel", {:synapse_core, "priv/python"}]
        )

      assert options.python_path == [Path.expand("rel"), {:synapse_core, "priv/python"}]
    end

    test "an application that is not in the code path is refused" do
      assert_raise ArgumentError, ~r/names the application :no_such_app/, fn ->
        SynapseCore.start_agent(
          name: unique_name(),
          agent: "m:a",
          python_path: [{:no_such_app, "priv/python"}]
        )
      end
    end

    test "other entries are refused" do
      for bad <- [
            [:atom],
            [{"app", "path"}],
            [{:synapse_core, ~c"priv"}],
            [{:synapse_core, "a\0b"}],
            "not a list"
          ] do
        assert_raise ArgumentError, ~r/:python_path/, fn ->
          SynapseCore.start_agent(name: unique_name(), agent: "m:a", python_path: bad)
        end
      end
    end

    test "{app, path} becomes the directory inside the application when a worker starts" do
      env = Python.worker_env(%{}, [{:synapse_core, "priv/python"}, "/x"], [], "/pkg")
      priv = :synapse_core |> :code.priv_dir() |> to_string()

      assert {"PYTHONPATH", Path.join(priv, "python") <> ":/x:/pkg"} in env
    end

    test "an agent finds its module through {app, path}" do
      # The fixtures, named relative to synapse_core's own directory.
      lib_dir = :synapse_core |> :code.lib_dir() |> to_string() |> Path.split()
      fixtures = Path.split(fixtures_path())
      common = Enum.zip(lib_dir, fixtures) |> Enum.take_while(fn {a, b} -> a == b end) |> length()
      ups = List.duplicate("..", length(lib_dir) - common)
      relative = Path.join(ups ++ Enum.drop(fixtures, common))

      name = start_fixture_agent!("echo_agent", python_path: [{:synapse_core, relative}])
      assert {:ok, %{output: _}} = SynapseCore.Agent.run_sync(name, "hello")
    end
  end
end
