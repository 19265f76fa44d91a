"""The pipeline's stages in the seed design's order: subscribe, fetch, aggregate, render, store, notify."""
