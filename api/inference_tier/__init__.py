"""The inference tier: `lorasp inference` processes that run the serving engine, and the API's router.

`backend.ServingBackend` is what the API's services use of a serving engine; an in-process
`ServingEngine` and an `InferenceRouter` (over `LORASP_INFERENCE_URLS`) both satisfy it.
"""
