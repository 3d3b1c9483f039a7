"""hybridhub's JupyterHub spawner: a resource picker over three hardware classes."""

from .catalog import Catalog, CatalogError, Offering, load_catalog
from .hybrid import HybridSpawner

__all__ = ["Catalog", "CatalogError", "HybridSpawner", "Offering", "load_catalog"]
