"""Data: class tables, the synthetic generator, dataset preparation and image loading."""
