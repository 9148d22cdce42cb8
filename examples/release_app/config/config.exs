import Config

# The Python packages of this application's agents, added to Synapse's own;
# `mix synapse.setup` locks them into python.lock. Test and lint tools would
# go in :python_dev_packages (dev and test only, never in a release).
config :synapse_core, python_packages: ["humanize==4.17.0"]
