"""What the outside reads: the counters, the collector over the latest published poll, and the HTTP face."""
