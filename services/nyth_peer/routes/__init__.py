"""The local API's routes, one router per resource; `nyth_peer.api.create_app` assembles
them under /v1 behind the bearer token.

Each module's `*_routes` function builds its router from what its routes need (the
engine, or `Unlocked`, which answers 423 while the profile is locked) and holds that
resource's request and response models.
"""
