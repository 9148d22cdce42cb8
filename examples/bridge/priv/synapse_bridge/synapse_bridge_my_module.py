"""Synapse Bridge server for the Python module `my_module`. Generated: do not edit;
regenerate with `python -m synapse_python.bridge generate --module my_module`.

`python -m synapse_python.worker --bridge my_module` serves it as the gRPC service
`synapse.bridge.my_module.MyModule`. This file, `my_module.ir.json` and `my_module.desc`
stay together in one directory on PYTHONPATH, and `my_module` must be importable.
"""

import my_module
from synapse_python.bridge import BridgeService

SERVICE = BridgeService.load(
    __file__,
    my_module,
    {
        "process_data": my_module.process_data,
    },
)
