"""Camera frame to embedding, pure numpy around LiteRT models: detect -> landmarks -> align ->
quality gate -> embed."""
from edge.lazy import lazy_exports

__all__ = ["Recognizer", "embedder_sha256", "FaceDetector", "Aligner", "Embedder", "assess", "fuse_embeddings", "open_model", "load_image"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "Recognizer": "edge.recognition.api",
    "embedder_sha256": "edge.recognition.api",
    "FaceDetector": "edge.recognition.detect",
    "Aligner": "edge.recognition.align",
    "Embedder": "edge.recognition.embed",
    "assess": "edge.recognition.quality",
    "fuse_embeddings": "edge.recognition.fusion",
    "open_model": "edge.recognition.runtime",
    "load_image": "edge.recognition.images",
})
