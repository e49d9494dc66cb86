"""Uploaded files: each caller's collection (``collection``) and where the bytes live (``blobs``)."""

from gateway.files.blobs import Blobs, open_blobs
from gateway.files.collection import CollectionFull, Files, Owner

__all__ = ["Blobs", "CollectionFull", "Files", "Owner", "open_blobs"]
