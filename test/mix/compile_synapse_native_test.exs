defmodule Mix.Tasks.Compile.SynapseNativeTest do
  use ExUnit.Case, async: true

  import Mix.Tasks.Compile.SynapseNative, only: [target_dir: 3]

  @root "/src/synapse"

  test "as a dependency, cargo builds under the application's _build, shared by its environments" do
    assert target_dir(@root, "/app/_build/dev", %{}) == "/app/_build/synapse_native"
    assert target_dir(@root, "/app/_build/prod", %{}) == "/app/_build/synapse_native"
    # An application inside this repository is still another application.
    assert target_dir(@root, "/src/synapse/examples/app/_build/prod", %{}) ==
             "/src/synapse/examples/app/_build/synapse_native"
  end

  test "this repository's own builds use its target/" do
    assert target_dir(@root, "/src/synapse/_build/test", %{}) == "/src/synapse/target"
  end

  test "MIX_BUILD_PATH and CARGO_TARGET_DIR are followed" do
    assert target_dir(@root, "/ci/build", %{"MIX_BUILD_PATH" => "/ci/build"}) ==
             "/ci/build/synapse_native"

    assert target_dir(@root, "/app/_build/dev", %{"CARGO_TARGET_DIR" => "/cache/cargo"}) ==
             "/cache/cargo"
  end
end
