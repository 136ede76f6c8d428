"""The feature browser: the latent table, a latent's top contexts, histogram, logit effects and neighbours."""

from views.features.view import FeatureBrowser

__all__ = ["FeatureBrowser"]
