"""Configuration: YAML models validated by pydantic, compiled to an immutable form."""
