"""Request-pipeline policies: one hook signature (`stile.core.pipeline.Policy`), one concern per module."""
