"""The gallery index: build over a folder, store on disk, search exactly or through faiss."""

from cir.index.gallery import GalleryIndex
from cir.index.search import ProductScores

__all__ = ["GalleryIndex", "ProductScores"]
