defmodule MyModule do
  use SynapseCore.Bridge.Client,
    python_module: "my_module",
    service: "synapse.bridge.my_module.MyModule",
    doc: "The Synapse Bridge's first example: a Pydantic model in, a string out.",
    regenerate: "mix synapse.gen.bridge my_module",
    descriptor: """
    CoQDCg9teV9tb2R1bGUucHJvdG8SGHN5bmFwc2UuYnJpZGdlLm15X21vZHVsZSJNChJQcm9jZXNz
    RGF0YVJlcXVlc3QSNwoEZGF0YRgBIAEoCzIjLnN5bmFwc2UuYnJpZGdlLm15X21vZHVsZS5JbnB1
    dERhdGFSBGRhdGEiOgoTUHJvY2Vzc0RhdGFSZXNwb25zZRIZCgV2YWx1ZRgBIAEoCUgAUgV2YWx1
    ZYgBAUIICgZfdmFsdWUiTAoJSW5wdXREYXRhEhcKBG5hbWUYASABKAlIAFIEbmFtZYgBARIVCgNh
    Z2UYAiABKANIAVIDYWdliAEBQgcKBV9uYW1lQgYKBF9hZ2UydgoITXlNb2R1bGUSagoLUHJvY2Vz
    c0RhdGESLC5zeW5hcHNlLmJyaWRnZS5teV9tb2R1bGUuUHJvY2Vzc0RhdGFSZXF1ZXN0Gi0uc3lu
    YXBzZS5icmlkZ2UubXlfbW9kdWxlLlByb2Nlc3NEYXRhUmVzcG9uc2ViBnByb3RvMw==
    """

  defmodel(InputData, python: "my_module:InputData", fields: [name: :string, age: :int64])

  defbridge(:process_data,
    doc: "Processes the input data and returns a greeting.",
    rpc: "ProcessData",
    params: [data: InputData],
    returns: :string
  )
end
