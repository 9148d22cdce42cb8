import Config

if config_env() == :test do
  # Worker output is logged at :info; tests that care capture it.
  config :logger, level: :warning
end
