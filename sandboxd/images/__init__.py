"""OCI images: a content-addressed store of unpacked layers, registry pulls, archive loads.

Modules, one job each:

* ``reference``: parse ``[registry/]name[:tag][@digest]`` the way docker does.
* ``oci``: media types, descriptors, manifests and image configs, validated from JSON.
* ``unpack``: turn one (hostile) layer tar into a directory, by file descriptor only.
* ``store``: the on-disk store (layers, short links, configs), its index, holds and prune.
* ``registry``: a client of the OCI distribution API (anonymous, basic, bearer token).
* ``archive``: read ``docker save`` archives and OCI image layouts / archives.
* ``manager``: pulls and loads end to end, with progress, limits, policy and metrics.
* ``run``: a request's image resolved (pulled on first use if allowed) and its config applied
  to the spec as ``docker run`` does; ``guest``: the image's user, from its own passwd/group,
  read through its merged layers by ``rootview`` (never the host's files).

The runtime's image step (``runtime/image.py``) holds an image for each sandbox through
``ImageManager.acquire``/``release`` and mounts its layers idmapped (``runtime/idmap.py``).
This package imports nothing from the runtime but ``safefs``/``syscalls``.
"""
