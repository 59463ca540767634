"""Gateway core: call context, pipeline, catalog and views, routing, sessions."""
