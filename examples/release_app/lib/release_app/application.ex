defmodule ReleaseApp.Application do
  @moduledoc false
  use Application

  @impl Application
  def start(_type, _args) do
    children = [
      {
        SynapseCore.Agent,
        # Found in this application's priv directory wherever it is installed.
        name: :assistant,
        agent: "release_app.agents:assistant",
        model: Application.fetch_env!(:release_app, :model),
        python_path: [{:release_app, "priv/python"}],
        env: Application.fetch_env!(:release_app, :worker_env)
      }
    ]

    Supervisor.start_link(children, strategy: :one_for_one, name: ReleaseApp.Supervisor)
  end
end
