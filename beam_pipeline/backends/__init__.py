"""One module per runtime, each a `models.Classifier`; `models.load` imports only the one a run uses."""
