"""One module per runtime, each a `models.Classifier`: tensorflow (the default), openvino and litert.

A runtime's module is imported only when `models.load` needs it, so a run never imports a runtime it does not use.
"""
