"""Support for the frameworks rocm_infer runs in, each behind its own extra.

* :mod:`rocm_infer.integrations.fastapi` (the ``fastapi`` extra):
  load models with a FastAPI app, hand them to routes, stream tokens as SSE.

Importing this package imports no framework.
"""
