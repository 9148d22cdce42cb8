defmodule SynapseCore.ReleaseTest do
  # Builds a release of examples/release_app (an application with its own
  # agent and Python package, synapse_core as a path dependency) and its
  # tarball, installs it elsewhere from the tarball and runs it from yet
  # another directory. Run alone with
  # `mix test --only release`. Takes a minute or so.
  use ExUnit.Case, async: false

  import SynapseCore.TestHelpers

  @moduletag :release
  @moduletag timeout: 600_000

  @root Path.expand("../..", __DIR__)
  @app Path.join(@root, "examples/release_app")

  setup_all do
    tmp = Path.join(System.tmp_dir!(), "synapse-release-#{System.pid()}-#{unique()}")
    File.rm_rf!(tmp)
    on_exit(fn -> File.rm_rf!(tmp) end)

    built = Path.join(tmp, "built/release_app")
    {output, status} = mix(["release", "--overwrite", "--path", built], build_env())
    assert status == 0, "mix release failed:\n#{output}"

    # Installed from its tarball somewhere else than where it was built,
    # which is gone.
    installed = Path.join(tmp, "installed/release_app")
    File.mkdir_p!(installed)
    [tarball] = Path.wildcard(Path.join(built, "*.tar.gz"))
    :ok = :erl_tar.extract(to_charlist(tarball), [:compressed, cwd: to_charlist(installed)])
    File.rm_rf!(built)
    %{tmp: tmp, release: installed, build_output: output}
  end

  test "a release started from another directory runs the app's agent and leaves nothing behind",
       %{tmp: tmp, release: release} do
    elsewhere = Path.join(tmp, "elsewhere")
    runtime = Path.join(tmp, "runtime")
    File.mkdir_p!(elsewhere)
    File.mkdir_p!(runtime)
    start_epmd!()
    env = release_env(runtime)
    bin = Path.join(release, "bin/release_app")

    port =
      Port.open({:spawn_executable, bin}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        args: ["start"],
        cd: elsewhere,
        env:
          Enum.map(env, fn {k, v} -> {to_charlist(k), if(v, do: to_charlist(v), else: false)} end)
      ])

    {:os_pid, beam} = Port.info(port, :os_pid)
    on_exit(fn -> if os_alive?(beam), do: System.cmd("kill", ["-9", to_string(beam)]) end)

    # The agent's tool formats its argument with `humanize`, a package only
    # the application declares: pydantic-ai's TestModel calls it with 0.
    answer =
      eventually(
        fn ->
          {out, _} = rpc(bin, elsewhere, env, ~S|IO.inspect(ReleaseApp.ask("How big?"))|)
          if out =~ "{:ok,", do: out
        end,
        90_000,
        500
      )

    assert answer =~ ~S|{:ok, "{\"file_size\":\"0 Bytes\"}"}|

    {interpreter, 0} =
      rpc(bin, elsewhere, env, "IO.puts(elem(SynapseCore.Python.interpreter(), 1))")

    assert String.trim(interpreter) == Path.join(release, "synapse_python/.venv/bin/python")

    running = processes_under(release)
    assert Enum.any?(running, &(&1 =~ "priv/bin/synapse-shepherd")), inspect(running)
    assert Enum.any?(running, &(&1 =~ "synapse_python.worker")), inspect(running)
    assert File.ls!(runtime) != []

    {_, 0} = System.cmd(bin, ["stop"], cd: elsewhere, env: env, stderr_to_stdout: true)
    assert_receive {^port, {:exit_status, 0}}, 30_000

    eventually(fn -> processes_under(release) == [] end, 10_000, 100)
    assert File.ls!(runtime) == []
  end

  test "the release carries a relocatable environment of the runtime packages only",
       %{release: release, build_output: output} do
    venv = Path.join(release, "synapse_python/.venv")
    [site] = Path.wildcard(Path.join(venv, "lib/python3.*/site-packages"))
    packages = File.ls!(site)

    for package <- ~w(humanize pydantic_ai grpc grpc_tools), do: assert(package in packages)
    for package <- ~w(pytest _pytest ruff matplotlib), do: refute(package in packages)

    assert File.read!(Path.join(venv, "pyvenv.cfg")) =~ "relocatable = true"
    [synapse] = Path.wildcard(Path.join(release, "lib/synapse_core-*"))
    refute File.exists?(Path.join(synapse, "priv/python/.venv"))

    assert File.exists?(
             Path.join(synapse, "priv/python/synapse_python/_proto/synapse/v1/agent_pb2.py")
           )

    assert output =~ "the machine that runs it needs the same Python at that path"
  end

  test "a synapse-shepherd that is not executable fails the agent's start with an error naming it",
       %{tmp: tmp, release: release} do
    [shepherd] = Path.wildcard(Path.join(release, "lib/synapse_core-*/priv/bin/synapse-shepherd"))
    File.chmod!(shepherd, 0o644)
    on_exit(fn -> File.chmod!(shepherd, 0o755) end)
    runtime = Path.join(tmp, "runtime-shepherd")
    File.mkdir_p!(runtime)

    {output, _status} =
      System.cmd(
        Path.join(release, "bin/release_app"),
        ["eval", "IO.inspect(Application.ensure_all_started(:release_app))"],
        env: release_env(runtime),
        stderr_to_stdout: true
      )

    assert output =~ "kind: :startup_failed"
    assert output =~ "cannot start synapse-shepherd at #{shepherd}: it is not executable"
  end

  test "mix synapse.setup says how to install uv when it is missing", %{tmp: tmp} do
    home = Path.join(tmp, "home")
    File.mkdir_p!(home)
    # A PATH with Elixir, Erlang and the system's tools, but no uv.
    path =
      ["elixir", "erl"]
      |> Enum.map(&(&1 |> System.find_executable() |> Path.dirname()))
      |> Kernel.++(["/usr/bin", "/bin"])
      |> Enum.uniq()

    for dir <- path, do: refute(File.exists?(Path.join(dir, "uv")))

    env = build_env() ++ [{"HOME", home}, {"PATH", Enum.join(path, ":")}, {"SYNAPSE_UV", nil}]

    # --dev asks for another environment than any built before, which needs uv.
    {output, status} = mix(["synapse.setup", "--dev"], env)
    assert status != 0
    assert output =~ "uv is needed to build the Python environment and was not found"
    assert output =~ "python3 -m pip install --user uv"
  end

  defp mix(args, env) do
    System.cmd(System.find_executable("mix"), args, cd: @app, env: env, stderr_to_stdout: true)
  end

  # The example builds synapse_core from this checkout, whose priv it shares:
  # the native code of the same profile is already built (cargo keeps it, the
  # test suite's with its test-only NIFs too).
  defp build_env do
    profile = Mix.Tasks.Compile.SynapseNative.installed_profile(@root)

    [
      {"MIX_ENV", "prod"},
      {"SYNAPSE_NATIVE_PROFILE", profile},
      {"CARGO_TARGET_DIR", Path.join(@root, "target")},
      {"MIX_BUILD_PATH", nil},
      {"MIX_EXS", nil},
      {"MIX_DEPS_PATH", nil},
      {"MIX_LOCKFILE", nil}
    ]
  end

  defp release_env(runtime) do
    [
      {"RELEASE_DISTRIBUTION", "sname"},
      {"RELEASE_NODE", "release_test_#{System.pid()}_#{unique()}"},
      {"RELEASE_COOKIE", "release-test-#{unique()}"},
      {"XDG_RUNTIME_DIR", runtime},
      {"MIX_ENV", nil},
      {"RELEASE_APP_MODEL", nil}
    ]
  end

  defp rpc(bin, cd, env, expression) do
    System.cmd(bin, ["rpc", expression], cd: cd, env: env, stderr_to_stdout: true)
  end

  # Command lines of the live processes that run something from `dir`.
  defp processes_under(dir) do
    for entry <- File.ls!("/proc"),
        String.match?(entry, ~r/^\d+$/),
        os_alive?(String.to_integer(entry)),
        {:ok, cmdline} <- [File.read("/proc/#{entry}/cmdline")],
        command = String.replace(cmdline, <<0>>, " "),
        String.contains?(command, dir),
        do: command
  end

  defp unique, do: System.unique_integer([:positive])
end
