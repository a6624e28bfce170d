"""The main job (`sppnet reproduce`) as stages with typed results: data, train, evaluate, export, build, serve,
detect, and the report assembled from what they measured. The top library layer: it may import every other.
"""
