"""The gallery index: build over a folder, store on disk, search exactly or through faiss."""

from cir.index.gallery import GalleryIndex

__all__ = ["GalleryIndex"]
