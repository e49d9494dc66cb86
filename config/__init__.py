"""Process settings and the declarative catalogue schema. Imports only pydantic, pydantic-settings and yaml."""

from config.catalog import Catalogue, CatalogueError, load_catalogue
from config.settings import Settings

__all__ = ["Catalogue", "CatalogueError", "Settings", "load_catalogue"]
