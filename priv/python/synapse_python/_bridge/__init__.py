"""The Synapse Bridge's implementation; `synapse_python.bridge` is its public face.

- `_ir`: the intermediate representation, its JSON form and the wire layout rules
- `_introspect`: Python module → IR
- `_proto_gen`, `_python_gen`: IR → `.proto` (+ descriptor set), Python server
  module (the Elixir client is rendered from the IR by `mix synapse.gen.bridge`)
- `_generate`: the files of one bridge, written or checked
- `_codec`: protobuf messages ↔ Python values, driven by the IR
- `_server`: the gRPC service a worker serves for a generated bridge
"""
