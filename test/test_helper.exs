ExUnit.start(formatters: [ExUnit.CLIFormatter, SynapseCore.FailureSummary])
