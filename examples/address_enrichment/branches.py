"""Branch offices of the (fictional) company: name -> (latitude, longitude) in decimal degrees.

The coordinates are those of the real cities' centres (city hall area), WGS 84.
"""

BRANCHES: dict[str, tuple[float, float]] = {
    "New York": (40.7128, -74.0060),
    "Boston": (42.3601, -71.0589),
    "Washington": (38.9072, -77.0369),
    "Atlanta": (33.7490, -84.3880),
    "Miami": (25.7617, -80.1918),
    "Chicago": (41.8781, -87.6298),
    "Minneapolis": (44.9778, -93.2650),
    "Dallas": (32.7767, -96.7970),
    "Denver": (39.7392, -104.9903),
    "Phoenix": (33.4484, -112.0740),
    "Los Angeles": (34.0522, -118.2437),
    "San Francisco": (37.7749, -122.4194),
    "Seattle": (47.6062, -122.3321),
}
