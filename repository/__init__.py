"""The torch-free core: model.json schema, repository layout, verification and the onnxruntime graph.

Dependencies run one way: training <- export -> repository <- wire <- service, client <- benchmarks.
This package imports nothing from the others; `repository.runtime` is the one module that imports
onnxruntime.
"""
