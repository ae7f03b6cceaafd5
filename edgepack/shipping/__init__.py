"""Shipping bundles to app teams: sign, verify, push, pull and list.

- signing.py  OpenSSF model-signing with a local elliptic-curve key: model.sig in the bundle
- integrity.py  every sha256 in manifest.json and the signature, as one structured result
  (edgepack/verify.py adds the device self-check for `edgepack verify`)
- refs.py     `host:port/repo:tag`, `...@sha256:...`, `file://PATH[:tag]`
- artifact.py the OCI artifact: media types, layers, annotations (shared by both stores)
- registry.py an OCI registry through oras-py; layout.py an OCI image layout on disk
- push.py, pull.py, listing.py  the three registry commands

Nothing here prints: cli.py turns results into lines and errors into exit codes.
"""
