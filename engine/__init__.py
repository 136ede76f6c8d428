"""LatentLab engine: stores, models, capture and every computation, free of Qt."""
