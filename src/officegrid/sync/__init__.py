"""Moving code and data to workers: only what changed crosses the network (promise 4).

Release trees (this package so far):

* :mod:`officegrid.sync.names`: safe file names, checked by publisher and workers alike.
* :mod:`officegrid.sync.manifest`: the per-directory manifest format (a Merkle tree; the release
  id is the root manifest's hash), parsing, walking and diffing.
* :mod:`officegrid.sync.tree`: building a release from a directory (``release create``).
* :mod:`officegrid.sync.materialize`: fetching only the missing pieces and writing a release
  atomically on a worker, or into a directory (``release pull``).
"""
