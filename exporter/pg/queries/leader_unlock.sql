-- Give up leadership of this target (sharding: this replica leads more than its share), so another replica takes it.
SELECT pg_catalog.pg_advisory_unlock(%(key)s)
