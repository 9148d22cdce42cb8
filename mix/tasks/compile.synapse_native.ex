defmodule Mix.Tasks.Compile.SynapseNative do
  @shortdoc "Builds synapse_core's Rust NIF and shepherd with cargo"
  @moduledoc """
  Builds the Cargo workspace (`native/synapse_native`, the NIF,
  `native/synapse_shepherd`, the port manager, and
  `native/synapse_lane_core`, a CPython extension module for the workers)
  and installs the results as `priv/native/libsynapse_native.so`,
  `priv/bin/synapse-shepherd` and
  `priv/python/synapse_python/_lane_core.abi3.so`.

  The build runs only when a Rust, Cargo or proto source is newer than the
  installed files, or when the build changed. The profile is `release` in
  the `:prod` environment and `debug` otherwise; set
  `SYNAPSE_NATIVE_PROFILE=release` (or `debug`) to choose it explicitly. In
  synapse_core's own `:test` environment the NIF also gets the NIFs that
  exist only for the test suite (the `test-nifs` cargo feature: failure
  injection); no other build has them.

  Cargo's target directory is `$CARGO_TARGET_DIR` when set. Otherwise it is
  `target/` in this repository when synapse_core is the project being built,
  and `synapse_native/` in the application's build directory (`_build/`,
  shared by its Mix environments) when synapse_core is a dependency: nothing
  is built inside the dependency's sources but the installed files. Keep that
  directory between CI runs or Docker builds to skip the first compile.
  """

  use Mix.Task.Compiler

  @recursive true

  @impl Mix.Task.Compiler
  def run(_args) do
    root = Path.expand("../..", __DIR__)
    profile = profile()
    features = if Mix.env() == :test, do: ["synapse_native/test-nifs"], else: []
    build = Enum.join([profile | features], "+")
    stamp = stamp_path(root)
    outputs = [nif_path(root), shepherd_path(root), lane_core_path(root)]

    if stale?(root, outputs, stamp, build) do
      build(root, profile, features)
      install(root, profile)
      File.write!(stamp, build)
      {:ok, []}
    else
      {:noop, []}
    end
  end

  @doc false
  # The profile (`"release"` or `"debug"`) of the native code installed in
  # `root`'s priv, for a build that shares it (the release test's); `nil`
  # when none is installed.
  @spec installed_profile(Path.t()) :: String.t() | nil
  def installed_profile(root) do
    case File.read(stamp_path(root)) do
      # The profile, then the cargo features it was built with.
      {:ok, build} -> build |> String.split("+") |> hd()
      {:error, _} -> nil
    end
  end

  defp stamp_path(root), do: Path.join(root, "priv/native/.profile")

  defp profile do
    case System.get_env("SYNAPSE_NATIVE_PROFILE") do
      nil -> if Mix.env() == :prod, do: :release, else: :debug
      "release" -> :release
      "debug" -> :debug
      other -> Mix.raise("SYNAPSE_NATIVE_PROFILE must be release or debug, got: #{other}")
    end
  end

  defp stale?(root, outputs, stamp, build) do
    sources =
      Path.wildcard(Path.join(root, "native/**/*.{rs,toml}")) ++
        Path.wildcard(Path.join(root, "proto/**/*.proto")) ++
        Enum.filter(
          [Path.join(root, "Cargo.toml"), Path.join(root, "Cargo.lock")],
          &File.exists?/1
        )

    File.read(stamp) != {:ok, build} or Mix.Utils.stale?(sources, outputs)
  end

  @doc false
  # Cargo's target directory for synapse_core at `root` built into the Mix
  # build directory `build`, given the OS environment `env`.
  @spec target_dir(Path.t(), Path.t(), %{String.t() => String.t()}) :: Path.t()
  def target_dir(root, build, env) do
    cond do
      dir = env["CARGO_TARGET_DIR"] -> Path.expand(dir)
      # This repository's own builds (dev, test, benchmarks) keep cargo's default.
      Path.dirname(build) == Path.join(root, "_build") -> Path.join(root, "target")
      # MIX_BUILD_PATH names one build directory: stay inside it.
      env["MIX_BUILD_PATH"] -> Path.join(build, "synapse_native")
      # _build/<env>: one cargo directory for every environment of the app.
      true -> Path.join(Path.dirname(build), "synapse_native")
    end
  end

  defp target_dir(root), do: target_dir(root, Mix.Project.build_path(), System.get_env())

  defp build(root, profile, features) do
    cargo =
      System.find_executable("cargo") ||
        Mix.raise("""
        synapse_core builds its native code with cargo, which is not on PATH.
        Install the Rust toolchain (https://rustup.rs) and make sure `cargo` is on PATH.
        """)

    args =
      ["build", "--locked"] ++
        Enum.flat_map(~w(synapse_native synapse_shepherd synapse_lane_core), &["-p", &1]) ++
        if(profile == :release, do: ["--release"], else: []) ++
        Enum.flat_map(features, &["--features", &1])

    target = target_dir(root)

    Mix.shell().info(
      "Compiling synapse_core native code (cargo, " <>
        "#{Enum.join([profile | features], ", ")}, in #{Path.relative_to_cwd(target)})"
    )

    env = [{"CARGO_TARGET_DIR", target}]

    case System.cmd(cargo, args, cd: root, env: env, stderr_to_stdout: true, into: IO.stream()) do
      {_, 0} -> :ok
      {_, status} -> Mix.raise("cargo build failed with exit status #{status}")
    end
  end

  defp install(root, profile) do
    target = Path.join(target_dir(root), Atom.to_string(profile))

    replace(built_library(target, "synapse_native"), nif_path(root))
    replace(Path.join(target, "synapse-shepherd"), shepherd_path(root))
    replace(built_library(target, "_lane_core"), lane_core_path(root))
  end

  defp built_library(target, name) do
    Enum.find_value(
      ["lib#{name}.so", "lib#{name}.dylib"],
      fn file -> if File.exists?(Path.join(target, file)), do: Path.join(target, file) end
    ) || Mix.raise("cargo did not produce lib#{name} in #{target}")
  end

  # A running VM may have the old library mapped: write a new file and rename
  # it over the old one instead of overwriting it in place.
  defp replace(source, destination) do
    File.mkdir_p!(Path.dirname(destination))
    temporary = destination <> ".tmp"
    File.cp!(source, temporary)
    File.chmod!(temporary, 0o755)
    File.rename!(temporary, destination)
  end

  defp nif_path(root), do: Path.join(root, "priv/native/libsynapse_native.so")
  defp shepherd_path(root), do: Path.join(root, "priv/bin/synapse-shepherd")

  # CPython loads a stable-ABI module by this suffix on Linux and macOS alike.
  defp lane_core_path(root),
    do: Path.join(root, "priv/python/synapse_python/_lane_core.abi3.so")
end
