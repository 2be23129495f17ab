"""VM drivers of the testbed cloud: ``dummy`` (timings only) and ``netns`` (real namespaces)."""
