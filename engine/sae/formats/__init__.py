"""SAE files written by other libraries, read into LatentLab's architectures: which library
wrote a folder (``detect_sae_format``, from its file names alone), one reader module per
library (each returns an ``SAEConfig`` and tensors in LatentLab's convention, which
``engine.sae.io.load_sae`` builds exactly as it builds its own), and SAELens release ids
resolved from the local Hugging Face cache (``hub``)."""

from engine.sae.formats.detect import FORMATS, detect_sae_format, sae_files
from engine.sae.formats.hub import resolve_sae_path
from engine.sae.formats.info import sae_info

__all__ = ["FORMATS", "detect_sae_format", "sae_files", "resolve_sae_path", "sae_info"]
