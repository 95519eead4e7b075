"""Publish to ssegate from Python with a plain Redis client (pip install redis).

Durable: through the gateway's Redis Function (history + id, resumable).
Ephemeral: a plain PUBLISH (no history, no id).
"""
import json
import sys

import redis

r = redis.Redis.from_url(sys.argv[1] if len(sys.argv) > 1 else "redis://127.0.0.1:6379")
channel = "session-42"

# Durable: FCALL ssegate_publish 1 sse:{<channel>}:log <payload> -> the event id.
envelope = json.dumps({"event": "order", "data": {"id": 7, "status": "shipped"}})
event_id = r.fcall("ssegate_publish", 1, f"sse:{{{channel}}}:log", envelope)
print("durable event id:", event_id.decode())

# Ephemeral: plain PUBLISH on sse:{<channel>}; any payload is the data verbatim.
r.publish(f"sse:{{{channel}}}", "typing...")
