defmodule Mix.Synapse.PythonEnvTest do
  # What `mix synapse.setup` and the release step build on: a real uv, real
  # packages (from uv's cache once fetched).
  use ExUnit.Case, async: false

  alias Mix.Synapse.PythonEnv

  @moduletag :tmp_dir

  setup %{tmp_dir: dir} do
    shell = Mix.shell()
    Mix.shell(Mix.Shell.Process)
    on_exit(fn -> Mix.shell(shell) end)
    %{env: %{PythonEnv.declared() | lock: Path.join(dir, "python.lock")}}
  end

  test "locks, installs, then does nothing while nothing changed", %{env: env, tmp_dir: dir} do
    project = Path.join(dir, "env")
    assert {:ok, python} = PythonEnv.build(env, project, dev: false, quiet: true)
    assert python == Path.join(project, ".venv/bin/python")
    lock = File.read!(env.lock)
    assert lock =~ ~s(name = "pydantic-ai-slim")
    assert {_, 0} = System.cmd(python, ["-c", "import pydantic_ai, grpc"])
    # The dev packages are locked, and not installed.
    assert lock =~ ~s(name = "pytest")
    assert {_, 1} = System.cmd(python, ["-c", "import pytest"], stderr_to_stdout: true)

    assert {:noop, ^python} = PythonEnv.build(env, project, dev: false, quiet: true)
    assert File.read!(env.lock) == lock
  end

  test "a lock that does not match the config fails the check and is left alone",
       %{env: env, tmp_dir: dir} do
    {:ok, _} = PythonEnv.build(env, Path.join(dir, "env"), dev: false, quiet: true)
    lock = File.read!(env.lock)
    changed = %{env | packages: env.packages ++ ["humanize==4.17.0"]}

    error =
      assert_raise Mix.Error, fn ->
        PythonEnv.build(changed, Path.join(dir, "env"), dev: false, lock: :check, quiet: true)
      end

    assert error.message =~ "python.lock is missing or does not match the configured"
    assert error.message =~ "Run `mix synapse.setup` and commit python.lock"
    assert File.read!(env.lock) == lock
  end

  test "SYNAPSE_UV names the uv to use, and must be one", %{tmp_dir: dir} do
    not_executable = Path.join(dir, "uv")
    File.write!(not_executable, "")

    try do
      System.put_env("SYNAPSE_UV", not_executable)

      assert_raise Mix.Error, ~r/SYNAPSE_UV is .*, which is not an executable file/, fn ->
        PythonEnv.uv!()
      end

      File.chmod!(not_executable, 0o755)
      assert PythonEnv.uv!() == not_executable
    after
      System.delete_env("SYNAPSE_UV")
    end
  end

  test "the packages the application declares are validated" do
    for bad <- [[:anthropic], "anthropic", [""], ["a\nb"]] do
      Application.put_env(:synapse_core, :python_packages, bad)

      try do
        assert_raise Mix.Error, ~r/:python_packages/, fn -> PythonEnv.declared() end
      after
        Application.delete_env(:synapse_core, :python_packages)
      end
    end
  end
end
