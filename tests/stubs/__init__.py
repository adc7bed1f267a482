"""Local stand-ins for external services (model providers), run as real servers."""
