"""Reference implementations that mario is measured against (optional `bench` extra)."""
