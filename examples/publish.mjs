// Publish to ssegate from Node with a plain Redis client (npm install redis).
//
// Durable: through the gateway's Redis Function (history + id, resumable).
// Ephemeral: a plain PUBLISH (no history, no id).
import { createClient } from "redis";

const client = createClient({ url: process.argv[2] ?? "redis://127.0.0.1:6379" });
await client.connect();
const channel = "session-42";

// Durable: FCALL ssegate_publish 1 sse:{<channel>}:log <payload> -> the event id.
const envelope = JSON.stringify({ event: "order", data: { id: 7, status: "shipped" } });
const id = await client.sendCommand(["FCALL", "ssegate_publish", "1", `sse:{${channel}}:log`, envelope]);
console.log("durable event id:", id);

// Ephemeral: plain PUBLISH on sse:{<channel>}; any payload is the data verbatim.
await client.publish(`sse:{${channel}}`, "typing...");
await client.quit();
