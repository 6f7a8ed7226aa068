"""Every request, response and config shape, defined once as pydantic models.

``requests``: what clients send; ``responses``: what the API answers; ``config``: the TOML
config; ``types``: the field types they share. The OpenAPI document (``api/openapi.py``), the
request validation, the config validation and ``docs/config.md`` are all generated from them.
"""
