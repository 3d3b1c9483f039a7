"""HybridSpawner through a real hub: catalog, options, admission, trust, quotas."""
