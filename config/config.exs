import Config

# The Python test and lint tools of this repository: `mix synapse.setup`
# installs them in the dev and test environments, never in :prod (the
# benchmarks' environment). Synapse's runtime pins are in
# priv/python/requirements.txt.
config :synapse_core,
  python_dev_packages: [
    "pytest==9.2.0",
    "pytest-asyncio==1.5.0",
    "ruff==0.17.6",
    # The OpenTelemetry SDK, for its in-memory span exporter (trace context tests).
    "opentelemetry-sdk==1.45.2"
  ]

if config_env() == :test do
  # Worker output is logged at :info; tests that care capture it.
  config :logger, level: :warning
end
