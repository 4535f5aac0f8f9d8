#!/bin/sh
# Reference fix for "cache-aside", run inside the cache container as user redis.
# Redis is full of session keys that never expire, capped at 4 MB with the policy noeviction, so
# it refuses every new key: the app can no longer cache anything. A pure cache should make room
# instead of refusing writes. Safe to run more than once.
set -eu

# Evict the least recently used keys, of any kind, when memory is full. (volatile-lru would not
# help: it only evicts keys with a TTL, and the junk has none.)
redis-cli CONFIG SET maxmemory-policy allkeys-lru

# Give the cache room: well above what it holds now, well below the container's 64 MB limit.
redis-cli CONFIG SET maxmemory 32mb

# redis-cli exits 0 even when Redis answers an error, so check that both settings took.
redis-cli CONFIG GET maxmemory-policy | grep -qx allkeys-lru
redis-cli CONFIG GET maxmemory | grep -qx 33554432

redis-cli INFO memory | grep -E '^(used_memory_human|maxmemory_human|maxmemory_policy):'

# The lasting fix is outside Redis: give the sessions a TTL, or a Redis of their own, so a cache
# and a store never compete for the same memory.
