import Config

# Read when the application (or the release) starts, not when it is built:
# the model, and the API keys its workers get, come from the environment.
# With the default, pydantic-ai's offline "test" model, no key is needed.
config :release_app,
  model: System.get_env("RELEASE_APP_MODEL", "test"),
  worker_env: ["OPENAI_API_KEY", "ANTHROPIC_API_KEY"]
