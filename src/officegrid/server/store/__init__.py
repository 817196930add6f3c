"""The store: every SQL statement of the server lives in this package.

``engine`` makes connections; ``schema`` holds the tables; one module per resource holds its
queries; ``units`` holds every state transition of a unit and its attempts.
"""

from officegrid.server.store.engine import Database, sqlite_url

__all__ = ["Database", "sqlite_url"]
