"""Store implementations; `redis.py` is the only module that imports redis."""
