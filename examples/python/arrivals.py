#!/usr/bin/env python3
"""Prints "<name> arrived at <place>" for each place event on PRESENCE.

A durable JetStream pull consumer: it resumes where it stopped, acks each
event once printed, and skips an event whose id it has already handled
in this run (a redelivery, or a copy presence published again after
JetStream's duplicate window). Late events (a phone's queue flushed hours later) are history,
not news: acked and not printed.

    pip install nats-py
    NATS_URL=nats://reader:<password>@127.0.0.1:4222 python3 arrivals.py [household]

Environment: NATS_URL (default nats://127.0.0.1:4222), ARRIVALS_DURABLE
(the consumer's name, default "arrivals-py"), ARRIVALS_MAX (stop at the end
of the fetched batch in which this many lines were printed, every event of it
acked; default: run until interrupted).
"""

import asyncio
import json
import os
import sys
from collections import OrderedDict

import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

# Ids remembered for deduplication: far more than one person's events in
# JetStream's duplicate window, few enough to keep in memory.
SEEN_MAX = 10_000


async def main() -> None:
    household = sys.argv[1] if len(sys.argv) > 1 else "*"
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    durable = os.environ.get("ARRIVALS_DURABLE", "arrivals-py")
    limit = int(os.environ.get("ARRIVALS_MAX", "0"))

    nc = await nats.connect(url)
    js = nc.jetstream()
    # stream= names PRESENCE directly: looking it up by subject needs a
    # permission a read-only user does not have.
    sub = await js.pull_subscribe(
        f"presence.{household}.*",
        durable=durable,
        stream="PRESENCE",
        config=ConsumerConfig(
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
        ),
    )
    seen: OrderedDict[str, None] = OrderedDict()
    printed = 0
    while limit == 0 or printed < limit:
        try:
            messages = await sub.fetch(batch=10, timeout=5)
        except NatsTimeout:
            continue
        for msg in messages:
            event = json.loads(msg.data)
            # A new version may mean what this program reads differently.
            if event.get("schema_version") != 1:
                sys.exit(f"event {event['id']}: schema_version {event.get('schema_version')}, this program reads 1")
            if event["id"] not in seen and event["kind"] == "place" and not event.get("late"):
                print(f'{event["state"]["name"]} arrived at {event["place"]}', flush=True)
                printed += 1
            seen[event["id"]] = None
            if len(seen) > SEEN_MAX:
                seen.popitem(last=False)
            await msg.ack()
    await nc.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
