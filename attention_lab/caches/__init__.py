"""KV caches, one module each: contiguous (ch03), rolling window (ch04), paged blocks and the allocator (ch11),
the serving engine built on them (ch11), allocation fragmentation (ch11) and cache sizes of real models (ch03, ch12)."""
