"""hybridhub's JupyterHub spawner: a resource picker over three hardware classes."""

from hybridhub.catalog import Catalog, CatalogError, Offering, load_catalog
from hybridhub.spawner.hybrid import HybridSpawner

__all__ = ["Catalog", "CatalogError", "HybridSpawner", "Offering", "load_catalog"]
